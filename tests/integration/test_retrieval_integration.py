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


def test_masking_follows_the_reference_on_the_real_model(smollm2):
    """Heads masked as Wu et al.'s needle_in_haystack_with_mask.py does: the prompt but its
    last token prefilled unmasked, the heads masked from the last prompt token on. The
    expected answer comes from a direct computation (no cache, TransformerLens'
    run_with_hooks, the masked heads' attention rows set to 1/(q+1) for q >= T−1 only;
    tests/unit/test_mask_scope.py). generate (per-test), niah() and the batched masking
    curves (default parameters) all give it; masking the prompt too changes the first
    step's log-prob on this model."""
    from analyses.niah import NiahAnswer, NiahParams, grid_tests, newline_ids, niah, response_text
    from analyses.retrieval import MaskingParams, retrieval_masking
    from probes.decoding import generate
    from probes.interventions import HeadMask
    from tests.unit.test_mask_scope import _direct

    m = smollm2.model
    top = ((17, 3), (18, 7), (23, 2), (18, 6), (17, 4))
    grid = dict(lengths=(100,), depths=(0.5,), needles=(0,), max_new_tokens=4)
    (t, nd), = grid_tests(m, MaskingParams(**grid))
    T, stops = t.prompt_len, set(newline_ids(m)) | {m.tokenizer.eos_token_id}
    ids, toks, lps = list(t.prompt_ids), [], []
    for _ in range(4):
        logits = _direct(m, ids, top, T - 1).float()
        toks.append(int(logits.argmax()))
        lps.append(float(logits.log_softmax(-1)[toks[-1]]))
        if toks[-1] in stops:
            break
        ids.append(toks[-1])
    prompt_masked = float(_direct(m, t.prompt_ids, top, 0).float().log_softmax(-1)[toks[0]])
    assert abs(prompt_masked - lps[0]) > 1e-2  # the scope matters here
    gen = generate(m, list(t.prompt_ids), max_new_tokens=4, interventions=[HeadMask(l, h) for l, h in top],
                   stop_tokens=tuple(stops), intervention_scope="decode")
    assert list(gen.new_tokens) == toks
    # float32, 30 layers: cached vs uncached sums differ by ~1e-5 in log-probs of order 1
    np.testing.assert_allclose(gen.logprobs, lps, rtol=0, atol=2e-4)
    want = NiahAnswer.of(nd, response_text(m, toks), toks)
    res = niah(m, NiahParams(**grid, interventions=tuple(HeadMask(l, h) for l, h in top)))
    assert res.tests["response"].tolist() == [want.response]
    ranking = top + tuple((l, h) for l in range(m.cfg.n_layers) for h in range(m.cfg.n_heads) if (l, h) not in top)
    curves = retrieval_masking(m, MaskingParams(**grid, ks=(5,), seeds=1, heads=ranking, batch_size=4))
    assert curves.mask_scope == "decode" and "top 100" in curves.random_pool
    row = curves.curves[curves.curves["which"] == "retrieval"].iloc[0]
    assert row["mean_recall"] == want.recall and row["mean_key_recall"] == want.key_recall
    drawn = [tuple(int(x) for x in h[1:].split("H")) for h in curves.curves[curves.curves["which"] == "random"].iloc[0]["heads"].split()]
    assert len(drawn) == 5 and not set(drawn) & set(ranking[:100])
