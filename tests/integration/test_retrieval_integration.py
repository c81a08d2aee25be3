"""Retrieval heads on the embedded model: exact needle and answer spans, prompt formats, the
batched scan against an independent implementation of the reference's detection loop on
Hugging Face attention, the batched scan against the per-test loop, bad input."""

import json

import numpy as np
import pytest
import torch

from mechscope.analyses.niah import QUESTION, build_test, load_needles, needle_pieces, newline_ids, rouge1_recall
from mechscope.analyses.retrieval import scan, score_test
from mechscope.probes.errors import InputError
from mechscope.probes.tokens import text_ids

pytestmark = pytest.mark.integration


def test_builder_spans_and_formats(smollm2):
    m = smollm2.model
    nd = load_needles()
    assert len(nd) >= 3
    for i, needle in enumerate(nd):  # no tokenisation merges across the answer's edges on this tokenizer
        lead, ans, rest = needle_pieces(m, needle)
        assert lead + ans + rest == text_ids(m, needle.needle)
        t = build_test(m, needle, 300, 0.5, "chat", i)
        assert m.tokenizer.decode(list(t.prompt_ids[slice(*t.answer_span)])) == " " + needle.answer
        assert t.needle_start < t.answer_start and t.answer_end <= t.needle_end
    texts = {}
    for fmt in ("chat", "plain", "plain_newline"):
        t = build_test(m, nd[1], 300, 0.5, fmt, 1)
        assert m.tokenizer.decode(list(t.prompt_ids[t.needle_start:t.needle_end])) == nd[1].needle
        assert t.prompt_format == fmt and t.prompt_len == len(t.prompt_ids)
        text = texts[fmt] = m.tokenizer.decode(list(t.prompt_ids))
        assert text.endswith("Question: " + nd[1].question + "\nAnswer:" + ("<|im_end|>\n<|im_start|>assistant\n" if fmt == "chat" else ""))
        assert text.startswith("<|im_start|>system") == (fmt == "chat")
        # context = 300 tokens: haystack + needle + its newline
        n_ctx_tokens = t.prompt_len - len(build_test(m, nd[1], 300, 0.0, fmt, 1).prompt_ids) + 300
        assert n_ctx_tokens == 300
    q = QUESTION.format(question=nd[1].question)
    assert "</book>\n" + q in texts["chat"]  # the reference's instruct format
    context = texts["plain"][: -len(q)]
    assert texts["plain"] == context + q and not context.endswith("\n")  # the reference's: nothing in between
    assert texts["plain_newline"] == context + "\n" + q
    d0, d1 = build_test(m, nd[0], 400, 0.0, "plain"), build_test(m, nd[0], 400, 1.0, "plain")
    assert d0.needle_start == 0 and d0.insert_at == 0
    assert d1.actual_depth > 0.9  # snapped back to the last line start only


def _reference_detection(hf, prompt_ids, real_needle_ids, max_new_tokens, stops):
    """Wu et al.'s detection loop, written from ``retrieval_head_detection.py`` on a Hugging
    Face model: the span is the first window of len(real_needle) prompt tokens whose token
    set overlaps real_needle's by > 90 % (``find_needle_idx``); the prompt minus its last
    token is prefilled, then each cached step feeds one token with ``output_attentions`` and
    emits the argmax; every layer's and head's last-row ``topk(1)`` that lies in the span on
    a prompt token equal to the emitted one adds 1/len(span) (``retrieval_calculate``).
    Stops after EOS or a newline token (the reference: newline only)."""
    n, want = len(real_needle_ids), set(real_needle_ids)
    start = next(i for i in range(len(prompt_ids))
                 if len(set(prompt_ids[i:i + n]) & want) / len(want) > 0.9)
    end = start + n
    cfg = hf.config
    score = np.zeros((cfg.num_hidden_layers, cfg.num_attention_heads))
    emitted = []
    with torch.no_grad():
        past = hf(input_ids=torch.tensor([prompt_ids[:-1]]), use_cache=True).past_key_values
        inp = torch.tensor([[prompt_ids[-1]]])
        for _ in range(max_new_tokens):
            out = hf(input_ids=inp, past_key_values=past, use_cache=True, output_attentions=True)
            past = out.past_key_values
            tok = int(out.logits[0, -1].argmax())
            emitted.append(tok)
            for layer, att in enumerate(out.attentions):
                for head in range(att.shape[1]):
                    j = int(att[0, head, -1].topk(1).indices[0])
                    if start <= j < end and tok == prompt_ids[j]:
                        score[layer, head] += 1 / (end - start)
            if tok in stops:
                break
            inp = torch.tensor([[tok]])
    return (start, end), emitted, score


def test_scan_equals_an_independent_reference_loop_on_hf_attention(smollm2, hf_smollm2):
    """One ~500-token test: the batched scan's answer span, tokens and [L, H] scores equal
    the reference's loop (above) run on the Hugging Face model's own attention. The answer
    part is tokenised with its leading space (the reference's SentencePiece tokenizer adds
    one); a counted test whose response restates the lead-in, so copies of the lead-in (not
    scored) happen."""
    m = smollm2.model
    nd = load_needles()
    i = 1
    t = build_test(m, nd[i], 500, 0.5, "chat", i)
    ((_, ans, ours),) = scan(m, [(t, nd[i])], max_new_tokens=50, batch_size=1)
    stops = set(newline_ids(m)) | {m.tokenizer.eos_token_id}
    before = hf_smollm2.config._attn_implementation
    hf_smollm2.set_attn_implementation("eager")  # the attention weights themselves (output_attentions)
    try:
        span, emitted, ref = _reference_detection(hf_smollm2, list(t.prompt_ids), text_ids(m, " " + nd[i].answer),
                                                  50, stops)
    finally:
        hf_smollm2.set_attn_implementation(before)
    assert span == t.answer_span
    assert tuple(emitted) == ans.new_tokens
    assert ans.recall > 0.5 and nd[i].needle[: nd[i].needle.rfind(nd[i].answer)].strip() in ans.response
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)  # float64 sums of multiples of 1/|span|
    assert ref.max() > 0.1 and (ref > 0.1).sum() < 0.2 * ref.size  # some heads copy, most do not


def test_batched_scan_equals_the_per_test_loop_on_the_real_model(smollm2):
    """Three tests of different lengths decoded as rows of one left-padded batch: the same
    answers and identical scores as the per-test greedy loop (24 new tokens: the lead-in
    and the answer part)."""
    m = smollm2.model
    nd = load_needles()
    built = [(build_test(m, nd[i], n, d, "chat", i), nd[i]) for i, n, d in ((0, 120, 0.2), (1, 240, 0.5), (1, 200, 0.8))]
    assert len({t.prompt_len for t, _ in built}) == 3
    got = {i: (a, s) for i, a, s in scan(m, built, max_new_tokens=24, batch_size=3)}
    counted = 0
    for i, (t, needle) in enumerate(built):
        ref_ans, ref = score_test(m, t, needle, max_new_tokens=24)
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
    from mechscope.analyses.niah import NiahAnswer, NiahParams, grid_tests, newline_ids, niah, response_text
    from mechscope.analyses.retrieval import MaskingParams, retrieval_masking
    from mechscope.probes.decoding import generate
    from mechscope.probes.interventions import HeadMask
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
    np.testing.assert_allclose(gen.logprobs, lps, rtol=1e-6, atol=2e-4)
    want = NiahAnswer.of(nd, response_text(m, toks), toks)
    res = niah(m, NiahParams(**grid, interventions=tuple(HeadMask(l, h) for l, h in top)))
    assert res.tests["response"].tolist() == [want.response]
    ranking = top + tuple((l, h) for l in range(m.cfg.n_layers) for h in range(m.cfg.n_heads) if (l, h) not in top)
    curves = retrieval_masking(m, MaskingParams(**grid, ks=(5,), seeds=1, heads=ranking, batch_size=4))
    assert curves.mask_scope == "decode" and "top 100" in curves.random_pool
    row = curves.curves[curves.curves["which"] == "retrieval"].iloc[0]
    assert row["mean_recall"] == want.recall and row["accuracy"] == float(want.recall > curves.params.recall_threshold)
    drawn = [tuple(int(x) for x in h[1:].split("H")) for h in curves.curves[curves.curves["which"] == "random"].iloc[0]["heads"].split()]
    assert len(drawn) == 5 and not set(drawn) & set(ranking[:100])
