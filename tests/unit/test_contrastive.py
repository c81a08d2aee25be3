"""Contrastive search (Su et al. 2022; docs/isotropy.md#contrastive-search) on tiny models: α = 0 is greedy, the
KV-cached batched path equals a naive re-implementation that recomputes everything."""

import pytest
import torch

from mechscope.probes.contrastive import Contrastive
from mechscope.probes.decoding import STRATEGIES, generate, score_continuation
from mechscope.probes.errors import InputError
from mechscope.probes.interventions import HeadMask, NeuronClamp, SteeringVector

PROMPT = [3, 17, 5, 29, 8, 11]


def naive_contrastive(model, prompt, n, alpha, k):
    """Textbook contrastive search: every candidate's sequence recomputed from scratch."""
    ids = list(prompt)
    for _ in range(n):
        with torch.no_grad():
            _, cache = model.run_with_cache(torch.tensor([ids]), names_filter="ln_final.hook_normalized")
            logits = model(torch.tensor([ids]))[0, -1]
        probs = logits.softmax(-1)
        top_p, top_ids = probs.topk(k)
        best, best_score = None, None
        for p, v in zip(top_p.tolist(), top_ids.tolist()):
            seq = torch.tensor([ids + [v]])
            with torch.no_grad():
                hs = model.ln_final(model(seq, stop_at_layer=model.cfg.n_layers))[0]  # final-norm states
            h = hs / hs.norm(dim=-1, keepdim=True)
            penalty = float((h[:-1] @ h[-1]).max())
            score = (1 - alpha) * p - alpha * penalty
            if best_score is None or score > best_score:
                best, best_score = v, score
        ids.append(best)
    return ids[len(prompt):]


def test_alpha_zero_is_greedy(tiny):
    greedy = generate(tiny, PROMPT, 12, "greedy").new_tokens
    for policy in ("full", None):
        assert generate(tiny, PROMPT, 12, Contrastive(alpha=0.0, k=4), kv_policy=policy).new_tokens == greedy


@pytest.mark.parametrize("alpha,k", [(0.6, 4), (0.9, 3), (0.5, 1)])
def test_cached_batched_search_equals_naive(tiny64, alpha, k):
    expected = naive_contrastive(tiny64, PROMPT, 10, alpha, k)
    for policy in ("full", None):
        gen = generate(tiny64, PROMPT, 10, Contrastive(alpha=alpha, k=k), kv_policy=policy)
        assert list(gen.new_tokens) == expected
    if k == 1:
        assert expected == list(generate(tiny64, PROMPT, 10, "greedy").new_tokens)


def test_contrastive_differs_from_greedy_and_reports_true_logprobs(tiny64):
    gen = generate(tiny64, PROMPT, 10, Contrastive())
    assert gen.new_tokens != generate(tiny64, PROMPT, 10, "greedy").new_tokens  # the penalty matters here
    teacher = score_continuation(tiny64, PROMPT, gen.new_tokens)
    assert torch.allclose(torch.tensor(gen.logprobs, dtype=torch.float64), teacher.double(), atol=1e-9)


def test_bounded_kv_policy_equals_its_own_greedy_when_alpha_zero(tiny):
    from mechscope.probes.kv_policies import SinkWindow

    pol = SinkWindow(2, 4)
    g = generate(tiny, PROMPT, 14, "greedy", kv_policy=pol)
    c = generate(tiny, PROMPT, 14, Contrastive(alpha=0.0), kv_policy=pol)
    assert c.new_tokens == g.new_tokens and c.max_cache_len_seen == g.max_cache_len_seen


def test_registered_and_bad_input(tiny):
    assert STRATEGIES.from_dict(Contrastive(0.3, 5).to_dict()) == Contrastive(0.3, 5)
    for bad in (dict(alpha=1.5), dict(alpha=-0.1), dict(k=0), dict(k=2.5)):
        with pytest.raises(InputError, match="α|k"):
            Contrastive(**bad)


def test_repetition_and_diversity_by_hand():
    from mechscope.analyses.isotropy import diversity, rep_n

    toks = [1, 2, 1, 2, 1, 2]  # bigrams 12,21,12,21,12: 2 unique of 5 → rep-2 = 60
    assert rep_n(toks, 2) == pytest.approx(60.0)
    assert rep_n(toks, 3) == pytest.approx(100 * (1 - 2 / 4))
    assert rep_n(toks, 4) == pytest.approx(100 * (1 - 2 / 3))
    assert diversity(toks) == pytest.approx(0.4 * 0.5 * (2 / 3))
    assert rep_n([1, 2, 3, 4], 2) == 0.0 and diversity([1, 2, 3, 4, 5]) == 1.0


# ---------------------------------------------------------------------------------------
# The shared-row candidate pass (k candidates as k positions of one row over one cache)


def _spy_paths(monkeypatch):
    """Count which candidate pass each step took."""
    import mechscope.probes.contrastive as pc

    calls = {"shared": 0, "rows": 0}
    shared, rows = pc._score_shared, pc._score_rows

    def spy_shared(*a):
        calls["shared"] += 1
        return shared(*a)

    def spy_rows(*a):
        calls["rows"] += 1
        return rows(*a)

    monkeypatch.setattr(pc, "_score_shared", spy_shared)
    monkeypatch.setattr(pc, "_score_rows", spy_rows)
    return calls


def _rows_only(monkeypatch):
    import mechscope.probes.contrastive as pc

    monkeypatch.setattr(pc, "shares_one_row", lambda *a, **kw: False)


@pytest.mark.parametrize("variant", [
    dict(),  # RoPE in halves over the whole head
    dict(n_key_value_heads=2),  # grouped-query attention
    dict(adjacent_pairs=True),  # GPT-J-style pairs
    dict(rotary_dim=4),  # partial rotary: half of each head rotated
])
def test_shared_row_pass_equals_naive(monkeypatch, variant):
    from tests.tiny import tiny_model

    model = tiny_model(dtype=torch.float64, **variant)
    expected = naive_contrastive(model, PROMPT, 10, 0.6, 4)
    calls = _spy_paths(monkeypatch)
    assert list(generate(model, PROMPT, 10, Contrastive(), kv_policy="full").new_tokens) == expected
    assert calls == {"shared": 10, "rows": 0}


def test_shared_row_states_equal_k_rows_states(tiny64):
    """The candidates' final states themselves, not only the chosen tokens: equal to float64
    rounding between the shared row and k separate rows, at every step."""
    import mechscope.probes.contrastive as pc

    seen = {"shared": [], "rows": []}
    orig_shared = pc._score_shared

    def both(model, stepper, ids, held):
        h = orig_shared(model, stepper, ids, held)
        # the same candidates again as k rows over the cache as it was before the shared pass
        t = stepper.batch.q_offset
        saved = [(e.past_keys, e.past_values) for e in stepper.cache.entries]
        mask = stepper.cache.previous_attention_mask
        for e in stepper.cache.entries:
            e.past_keys, e.past_values = e.past_keys[:, :t], e.past_values[:, :t]
        stepper.cache.previous_attention_mask = mask[:, :t]
        h_rows = pc._score_rows(model, stepper, ids, held)
        for e, (k, v) in zip(stepper.cache.entries, saved):
            e.past_keys, e.past_values = k, v
        stepper.cache.previous_attention_mask = mask
        stepper.batch = stepper.batch.__class__(ids[None], torch.tensor([ids.numel()]), [0], q_offset=t)
        seen["shared"].append(h)
        seen["rows"].append(h_rows)
        return h

    import unittest.mock as mock

    with mock.patch.object(pc, "_score_shared", both):
        generate(tiny64, PROMPT, 8, Contrastive(k=5))
    assert len(seen["shared"]) == 8
    for a, b in zip(seen["shared"], seen["rows"]):
        scale = float(b.abs().max())
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12 * scale)


@pytest.mark.parametrize("make_iv", [
    lambda m: HeadMask(1, 2, "uniform"),
    lambda m: HeadMask(0, 1, "zero"),
    lambda m: NeuronClamp(1, 7, value=3.0),
    lambda m: SteeringVector.from_tensor(0, torch.linspace(-1, 1, m.cfg.d_model), 2.0),
])
def test_shared_row_pass_under_positionwise_interventions(tiny64, monkeypatch, make_iv):
    iv = make_iv(tiny64)
    calls = _spy_paths(monkeypatch)
    shared = generate(tiny64, PROMPT, 10, Contrastive(), interventions=[iv]).new_tokens
    assert calls["shared"] == 10
    _rows_only(monkeypatch)
    rows = generate(tiny64, PROMPT, 10, Contrastive(), interventions=[iv]).new_tokens
    plain = generate(tiny64, PROMPT, 10, Contrastive()).new_tokens
    assert shared == rows and shared != plain  # the intervention matters, and both paths agree


def test_falls_back_to_k_rows_where_one_row_would_not_be_exact(monkeypatch):
    from mechscope.probes.interventions import AttentionEdit, positionwise
    from mechscope.probes.razor import RazorAttention
    from mechscope.saes.interventions import SaeClamp, SaeSteer
    from tests.tiny import tiny_model

    # no RoPE: positions are added to the embeddings, the candidates cannot share a row
    absolute = tiny_model(rotary=False, dtype=torch.float64)
    expected = naive_contrastive(absolute, PROMPT, 6, 0.6, 4)
    calls = _spy_paths(monkeypatch)
    assert list(generate(absolute, PROMPT, 6, Contrastive()).new_tokens) == expected
    assert calls == {"shared": 0, "rows": 6}

    # a pass that would run past n_ctx: the last steps fall back, and the text is unchanged
    short = tiny_model(n_ctx=16, dtype=torch.float64)
    expected = naive_contrastive(short, PROMPT, 10, 0.6, 4)
    calls["shared"] = calls["rows"] = 0
    assert list(generate(short, PROMPT, 10, Contrastive()).new_tokens) == expected
    assert calls["rows"] == 3 and calls["shared"] == 7  # cache lengths 13, 14, 15: 13 + 4 > 16

    # a KV policy that masks by hooks (RazorAttention) → k rows
    model = tiny_model(dtype=torch.float64)
    calls["shared"] = calls["rows"] = 0
    generate(model, PROMPT, 4, Contrastive(), kv_policy=RazorAttention(heads=((0, 1),), n_sink=1, window=2))
    assert calls == {"shared": 0, "rows": 4}

    # interventions whose effect depends on the pass's positions are not position-wise
    edit = AttentionEdit(0, lambda p, q: p)
    assert not positionwise(edit)
    assert not positionwise(SaeSteer("x", 0, 1.0, positions=(3,), skip_first=False))
    assert not positionwise(SaeSteer("x", 0, 1.0))  # skips the first position by default
    assert positionwise(SaeSteer("x", 0, 1.0, skip_first=False))
    assert not positionwise(SaeClamp("x", 0, 1.0)) and positionwise(SaeClamp("x", 0, 1.0, skip_first=False))
    calls["shared"] = calls["rows"] = 0
    generate(model, PROMPT, 3, Contrastive(), interventions=[edit])
    assert calls == {"shared": 0, "rows": 3}

    # a device where k rows are faster (GPUs): no shared-row hooks, k rows, the same text
    import mechscope.probes.contrastive as pc

    expected = naive_contrastive(model, PROMPT, 5, 0.6, 4)
    monkeypatch.setattr(pc, "SHARED_ROW_DEVICES", ())
    calls["shared"] = calls["rows"] = 0
    assert len(Contrastive().hooks(model)) == 1  # the final-state hook only
    assert list(generate(model, PROMPT, 5, Contrastive()).new_tokens) == expected
    assert calls == {"shared": 0, "rows": 5}


def test_shared_row_under_a_bounded_policy_equals_k_rows(tiny64, monkeypatch):
    from mechscope.probes.kv_policies import SinkWindow

    pol = SinkWindow(2, 5)
    calls = _spy_paths(monkeypatch)
    shared = generate(tiny64, PROMPT, 14, Contrastive(), kv_policy=pol)
    assert calls["shared"] == 14
    _rows_only(monkeypatch)
    rows = generate(tiny64, PROMPT, 14, Contrastive(), kv_policy=pol)
    assert shared.new_tokens == rows.new_tokens
    assert shared.max_cache_len_seen == rows.max_cache_len_seen <= pol.max_cache_len + 1
