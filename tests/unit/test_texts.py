"""The one input pipeline (probes.texts): which texts an analysis reads, their token ids, the
shared Params fields, and results saved under the older field names."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from mechscope.probes import datasets
from mechscope.probes.errors import InputError
from mechscope.probes.texts import TextInputs, encode_texts, select_texts, text_set_names
from tests.tiny import tiny_model


class _CharTokenizer:
    """One token per character (id = ord % 40 + 2); BOS is id 1."""

    bos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        assert add_special_tokens is False
        return {"input_ids": [ord(c) % 40 + 2 for c in text]}


def _char_model(prepend_bos: bool):
    m = tiny_model(n_ctx=16)
    m.tokenizer = _CharTokenizer()
    m.cfg.default_prepend_bos = prepend_bos
    return m


def test_mixed_prefix_is_balanced_and_grouping_keeps_the_same_texts():
    by_domain = {d: datasets.load_texts(d) for d in ("prose", "code", "numbers")}
    # 64 texts: 22 + 21 + 21, the first of each domain (what the sinks analysis has always read)
    want = by_domain["prose"][:22] + by_domain["code"][:21] + by_domain["numbers"][:21]
    got = select_texts(None, "mixed", 64, grouped=True)
    assert [t.text for t in got] == want
    assert [t.domain for t in got] == ["prose"] * 22 + ["code"] * 21 + ["numbers"] * 21
    flat = select_texts(None, "mixed", 7)  # file order: interleaved p, c, n, p, c, n, p
    assert [t.text for t in flat] == [by_domain["prose"][0], by_domain["code"][0], by_domain["numbers"][0],
                                      by_domain["prose"][1], by_domain["code"][1], by_domain["numbers"][1],
                                      by_domain["prose"][2]]
    assert [t.text for t in select_texts(None, "code", None)] == by_domain["code"]


def test_given_texts_are_used_whole_with_their_domains():
    assert [tuple(t) for t in select_texts(["a", "b", "c"], "mixed", 1)] == [("texts", "a"), ("texts", "b"), ("texts", "c")]
    got = select_texts({"x": ["1", "2"], "y": ["3"]}, None, None)
    assert [(t.domain, t.text) for t in got] == [("x", "1"), ("x", "2"), ("y", "3")]
    with pytest.raises(InputError, match="text_set='mixed'"):
        select_texts("mixed")
    with pytest.raises(InputError, match="empty"):
        select_texts([])
    with pytest.raises(InputError, match="Unknown text set"):
        select_texts(None, "poetry")


def test_encode_cuts_after_bos_and_follows_the_policy():
    m = _char_model(prepend_bos=True)
    ids = encode_texts(m, ["abcdef"], max_tokens=4)
    assert ids[0].tolist() == [1] + [ord(c) % 40 + 2 for c in "abc"]  # BOS counts towards max_tokens
    assert encode_texts(m, ["abcdef"], max_tokens=4, prepend_bos=False)[0].tolist() == [ord(c) % 40 + 2 for c in "abcd"]
    m0 = _char_model(prepend_bos=False)
    assert encode_texts(m0, ["ab"])[0].tolist() == [ord("a") % 40 + 2, ord("b") % 40 + 2]
    # token ids are used as given (no BOS), range-checked, cut
    assert encode_texts(m, [[5, 6, 7, 8, 9]], max_tokens=3)[0].tolist() == [5, 6, 7]
    with pytest.raises(InputError, match="0..49"):
        encode_texts(m, [[5, 50]])
    # longer than n_ctx (16) only matters after the cut
    assert len(encode_texts(m, ["x" * 40], max_tokens=16)[0]) == 16
    with pytest.raises(InputError, match="n_ctx"):
        encode_texts(m, ["x" * 40])


@pytest.mark.parametrize("bad", ["", "   \n", []])
def test_an_empty_text_is_refused_with_its_index(bad):
    m = _char_model(prepend_bos=False)
    with pytest.raises(InputError, match="Text 1"):
        encode_texts(m, ["ok", bad, "ok"])


def test_neurons_refuse_an_empty_text_instead_of_shifting_the_indices():
    from mechscope.analyses.neurons import max_activating

    m = tiny_model()
    with pytest.raises(InputError, match="Text 1"):
        max_activating(m, 0, 3, texts=[[1, 2, 3], [], [4, 5, 6]], k=2)


def test_every_text_analysis_shares_the_block():
    from mechscope.analyses.catalog import import_all
    from mechscope.probes.results import PARAMS

    import_all()
    shared = {"texts", "text_set", "n_texts", "max_tokens"}
    readers = {k for k in PARAMS.names() if issubclass(PARAMS.get(k), TextInputs)}
    assert readers >= {"sinks", "isotropy", "whitening", "decoding_isotropy", "max_activating", "neuron_activity",
                       "microscope", "contextualisation", "sae_features", "sae_eval"}
    for k in readers:
        fields = {f.name: f for f in dataclasses.fields(PARAMS.get(k))}
        assert shared <= set(fields), k
        choices = fields["text_set"].metadata["choices"]
        assert choices() == datasets.text_sets() == text_set_names() == ["code", "mixed", "numbers", "prose"]
    for k in PARAMS.names():  # no analysis keeps an older name for the same thing
        names = {f.name for f in dataclasses.fields(PARAMS.get(k))}
        assert not names & {"max_texts", "max_tokens_per_text", "fit_text_set", "prompt_tokens"}, k


OLD = [  # (saved params as older versions wrote them, what they mean now)
    ({"kind": "microscope", "family": "params", "texts": "mixed", "max_tokens": 640, "max_tokens_per_text": 100,
      "id_points": 300, "id_method": "reference", "batch_size": 8},
     {"texts": None, "text_set": "mixed", "total_tokens": 640, "max_tokens": 100}),
    ({"kind": "microscope", "family": "params", "texts": [[1, 2], "ab"], "max_tokens": 4096, "max_tokens_per_text": 256},
     {"texts": ((1, 2), "ab"), "total_tokens": 4096, "max_tokens": 256}),
    ({"kind": "neuron_activity", "family": "params", "texts": ["a", "b", "c"], "max_texts": 2, "max_tokens": 256},
     {"texts": ("a", "b"), "n_texts": None}),
    ({"kind": "max_activating", "family": "params", "texts": "code", "max_texts": 5, "layer": 1, "neuron": 2},
     {"texts": None, "text_set": "code", "n_texts": 5, "layer": 1}),
    ({"kind": "sae_eval", "family": "params", "saes": ["x"], "rows": 5, "texts": "", "batch_size": 8},
     {"texts": None, "text_set": None, "n_texts": 5, "max_tokens": 128}),
    ({"kind": "sae_eval", "family": "params", "saes": [], "rows": 2, "texts": "mixed", "batch_size": 8},
     {"text_set": "mixed", "n_texts": 2}),
    ({"kind": "sae_features", "family": "params", "sae": "s", "texts": "prose", "n_texts": 9, "k": 2, "max_tokens": 32,
      "batch_size": 8}, {"text_set": "prose", "n_texts": 9, "max_tokens": 32}),
    ({"kind": "contextualisation", "family": "params", "texts": "numbers", "prefix": 2, "max_tokens_per_text": 64},
     {"text_set": "numbers", "max_tokens": 64}),
    ({"kind": "whitening", "family": "params", "fit_text_set": "prose", "apply_text_set": "code", "n_texts": 3,
      "max_tokens": 16}, {"text_set": "prose", "apply_text_set": "code", "n_texts": 3}),
    ({"kind": "decoding_isotropy", "family": "params", "prompts": None, "n_prompts": 1, "prompt_tokens": 8},
     {"texts": None, "text_set": "prose", "n_texts": 1, "max_tokens": 8}),
    ({"kind": "decoding_isotropy", "family": "params", "prompts": ["Once upon a time"], "n_prompts": 4, "prompt_tokens": 32},
     {"texts": ("Once upon a time",), "max_tokens": None}),  # given prompts were used whole
]


@pytest.mark.parametrize("saved,now", OLD, ids=[f"{d['kind']}-{i}" for i, (d, _) in enumerate(OLD)])
def test_params_saved_under_older_names_load(saved, now):
    from mechscope.analyses.catalog import import_all
    from mechscope.probes.results import PARAMS

    import_all()
    p = PARAMS.from_dict(json.loads(json.dumps(saved)))
    for k, v in now.items():
        assert getattr(p, k) == v, k
    assert PARAMS.from_dict(json.loads(json.dumps(p.to_dict()))) == p  # and saved again, it reads back the same


def test_an_old_result_folder_loads_and_reruns(tmp_path):
    from mechscope.analyses.catalog import load_result
    from mechscope.analyses.neurons import max_activating

    m = tiny_model()
    texts = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12]]
    res = max_activating(m, 0, 3, texts=texts[:2], k=2)
    res.save(tmp_path / "r")
    doc = json.loads((tmp_path / "r" / "result.json").read_text())
    params = doc["fields"]["params"]["$object"]
    params.pop("n_texts")  # what an older version wrote: the cap as max_texts, applied to the given texts
    params["max_texts"], params["texts"] = 2, texts
    (tmp_path / "r" / "result.json").write_text(json.dumps(doc))
    old = load_result(tmp_path / "r")
    assert old.params == res.params
    again = old.rerun(m)
    assert again.contexts.equals(res.contexts)
