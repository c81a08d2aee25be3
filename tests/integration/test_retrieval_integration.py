"""Retrieval heads on the embedded model: exact needle spans, prompt formats, the fast
(reducer) scores equal the materialising step-by-step loop, bad input."""

import json

import numpy as np
import pytest

from analyses.niah import build_test, load_needles, rouge1_recall
from analyses.retrieval import reference_scores, scan, score_test
from probes.errors import InputError

pytestmark = pytest.mark.integration


def test_builder_spans_and_formats(smollm2):
    m = smollm2.model
    nd = load_needles()
    assert len(nd) >= 3
    for fmt in ("chat", "plain"):
        t = build_test(m, nd[1], 300, 0.5, fmt, 1)
        assert m.tokenizer.decode(list(t.prompt_ids[t.needle_start:t.needle_end])) == nd[1].needle
        assert t.prompt_format == fmt and t.prompt_len == len(t.prompt_ids)
        text = m.tokenizer.decode(list(t.prompt_ids))
        assert text.endswith("Question: " + nd[1].question + "\nAnswer:" + ("<|im_end|>\n<|im_start|>assistant\n" if fmt == "chat" else ""))
        assert text.startswith("<|im_start|>system") == (fmt == "chat")
        # context = 300 tokens: haystack + needle + its newline
        n_ctx_tokens = t.prompt_len - len(build_test(m, nd[1], 300, 0.0, fmt, 1).prompt_ids) + 300
        assert n_ctx_tokens == 300
    d0, d1 = build_test(m, nd[0], 400, 0.0, "plain"), build_test(m, nd[0], 400, 1.0, "plain")
    assert d0.needle_start == 0 and d0.insert_at == 0
    assert d1.actual_depth > 0.9  # snapped back to the last line start only


def test_fast_scores_equal_the_materialising_loop_on_the_real_model(smollm2):
    m = smollm2.model
    nd = load_needles()
    t = build_test(m, nd[1], 150, 0.5, "chat", 1)
    fast_ans, fast = score_test(m, t, nd[1], max_new_tokens=8)
    ref_ans, ref = reference_scores(m, t, nd[1], max_new_tokens=8)
    assert fast_ans.new_tokens == ref_ans.new_tokens and fast_ans.response == ref_ans.response
    assert fast_ans.recall > 0.5  # a counted test
    np.testing.assert_array_equal(fast, ref)
    assert fast.max() > 0.1 and (fast > 0.1).sum() < 0.2 * fast.size  # some heads copy, most do not


def test_batched_scan_equals_the_per_test_loop_on_the_real_model(smollm2):
    """Three tests of different lengths decoded as rows of one left-padded batch: the same
    answers and identical scores as the per-test greedy loop."""
    m = smollm2.model
    nd = load_needles()
    built = [(build_test(m, nd[i], n, d, "chat", i), nd[i]) for i, n, d in ((1, 120, 0.2), (1, 240, 0.5), (1, 200, 0.8))]
    assert len({t.prompt_len for t, _ in built}) == 3
    got = {i: (a, s) for i, a, s in scan(m, built, max_new_tokens=8, batch_size=3)}
    counted = 0
    for i, (t, needle) in enumerate(built):
        ref_ans, ref = score_test(m, t, needle, max_new_tokens=8)
        ans, sc = got[i]
        assert ans == ref_ans
        np.testing.assert_array_equal(sc, ref)
        counted += ans.recall > 0.5
    assert counted == 3


def test_bad_input_one_clear_message(smollm2, tmp_path, monkeypatch):
    m = smollm2.model
    nd = load_needles()
    with pytest.raises(InputError, match="does not fit"):
        build_test(m, nd[0], 10, 0.5)
    with pytest.raises(InputError, match="outside"):
        build_test(m, nd[0], 300, 1.5)
    with pytest.raises(InputError, match="n_ctx"):
        build_test(m, nd[0], 8190, 0.5, max_new_tokens=50)
    (tmp_path / "long").mkdir()
    (tmp_path / "long" / "empty.txt").write_text("")
    (tmp_path / "checksums.json").write_text(json.dumps(
        {"long/empty.txt": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}))
    monkeypatch.setenv("MECHSCOPE_DATA", str(tmp_path))
    with pytest.raises(InputError, match="haystack"):
        build_test(m, nd[0], 300, 0.5, long_text="empty")


def test_rouge_recall_on_a_needle():
    nd = load_needles()[1]
    assert rouge1_recall(nd.answer, nd.needle) == 1.0


def test_batched_masking_rows_equal_niah_with_those_masks(smollm2):
    """retrieval_masking decodes every head set × test as rows of shared batches (per-row
    masks, left padding); its accuracy and mean recall equal niah() run with the same masks."""
    from analyses.niah import NiahParams, niah
    from analyses.retrieval import MaskingParams, retrieval_masking
    from probes.interventions import HeadMask

    m = smollm2.model
    grid = dict(lengths=(120, 200), depths=(0.2,), needles=(1,), max_new_tokens=8)
    res = retrieval_masking(m, MaskingParams(**grid, ks=(2,), seeds=1, heads=((17, 3), (18, 7)), batch_size=4))
    for _, row in res.curves.iterrows():
        heads = [tuple(int(x) for x in h[1:].split("H")) for h in row["heads"].split()]
        ref = niah(m, NiahParams(**grid, interventions=tuple(HeadMask(l, h) for l, h in heads)))
        assert row["accuracy"] == ref.accuracy
        assert row["mean_recall"] == float(ref.tests["recall"].mean())
