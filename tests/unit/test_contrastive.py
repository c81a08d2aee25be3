"""Contrastive search (Su et al. 2022; REFERENCES §16) on tiny models: α = 0 is greedy, the
KV-cached batched path equals a naive re-implementation that recomputes everything."""

import pytest
import torch

from probes.contrastive import Contrastive
from probes.decoding import STRATEGIES, generate, score_continuation
from probes.errors import InputError

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
    from probes.kv_policies import SinkWindow

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
    from analyses.isotropy import diversity, rep_n

    toks = [1, 2, 1, 2, 1, 2]  # bigrams 12,21,12,21,12: 2 unique of 5 → rep-2 = 60
    assert rep_n(toks, 2) == pytest.approx(60.0)
    assert rep_n(toks, 3) == pytest.approx(100 * (1 - 2 / 4))
    assert rep_n(toks, 4) == pytest.approx(100 * (1 - 2 / 3))
    assert diversity(toks) == pytest.approx(0.4 * 0.5 * (2 / 3))
    assert rep_n([1, 2, 3, 4], 2) == 0.0 and diversity([1, 2, 3, 4, 5]) == 1.0
