"""analyses.playground: baseline vs intervened generations and the per-token Δp."""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import torch

from mechscope.analyses.playground import PlaygroundResult, compare_generations
from mechscope.probes.decoding import Sample, cache_len, generate, keep_cache_positions
from mechscope.probes.errors import InputError
from mechscope.probes.interventions import HeadMask, NeuronClamp
from mechscope.probes.results import Result

PROMPT = [7, 3, 11, 3, 19, 2]


@dataclass(frozen=True)
class KeepAll:
    """A policy object that is not FullCache but keeps everything: takes the forced route."""

    name: ClassVar[str] = "keep-all"
    prefill_chunk: int | None = None
    max_cache_len: int | None = None

    def trim(self, cache) -> None:
        return None


@dataclass(frozen=True)
class LastTwo:
    """Keeps only the two most recent cache entries (a bounded policy)."""

    name: ClassVar[str] = "last-two"
    prefill_chunk: int | None = 1
    max_cache_len: int | None = 2

    def trim(self, cache) -> None:
        n = cache_len(cache)
        if n > 2:
            keep_cache_positions(cache, torch.arange(n - 2, n))


def _p_by_hand(model, prompt, cont, fwd_hooks=()):
    ids = torch.tensor([list(prompt) + list(cont)])
    with torch.no_grad():
        logits = model.run_with_hooks(ids, fwd_hooks=list(fwd_hooks))[0]
    lp = logits[len(prompt) - 1 : -1].log_softmax(-1)
    return lp.gather(-1, torch.tensor(cont)[:, None])[:, 0].exp().double().numpy()


def test_no_intervention_means_no_change(tiny):
    r = compare_generations(tiny, PROMPT, [], max_new_tokens=8)
    assert np.array_equal(r.baseline_ids, r.intervened_ids)
    np.testing.assert_allclose(r.delta_p, 0.0, atol=1e-6)
    # p_base is the teacher-forced probability: it equals the greedy generation's own log-probs
    gen = generate(tiny, PROMPT, 8)
    np.testing.assert_allclose(r.p_base, np.exp(gen.logprobs), rtol=1e-4)
    assert r.baseline_ids.tolist() == list(gen.new_tokens)


def test_delta_p_matches_hand_hooks(tiny):
    clamp = NeuronClamp(0, 5, value=30.0)
    r = compare_generations(tiny, PROMPT, [clamp], max_new_tokens=10)

    def by_hand(act, hook):
        act[..., 5] = 30.0
        return act

    cont = r.baseline_ids.tolist()
    np.testing.assert_allclose(r.p_base, _p_by_hand(tiny, PROMPT, cont), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(r.p_intervened, _p_by_hand(tiny, PROMPT, cont, [("blocks.0.mlp.hook_post", by_hand)]),
                               rtol=1e-4, atol=1e-7)
    assert np.abs(r.delta_p).max() > 1e-3  # this clamp does change the model
    # the intervened continuation is what greedy decoding gives under the clamp
    assert r.intervened_ids.tolist() == list(generate(tiny, PROMPT, 10, interventions=[clamp]).new_tokens)
    frame = r.to_frame()
    np.testing.assert_allclose(frame["delta_p"], frame["p_intervened"] - frame["p_base"])


def test_forced_route_equals_score_continuation(tiny):
    """With a policy that keeps every entry, forcing the baseline tokens step by step through the
    KV cache gives the same probabilities as one teacher-forced pass."""
    ivs = [HeadMask(1, 2, "zero"), NeuronClamp(0, 1, scale=-4.0)]
    a = compare_generations(tiny, PROMPT, ivs, max_new_tokens=9, kv_policy="full")
    b = compare_generations(tiny, PROMPT, ivs, max_new_tokens=9, kv_policy=KeepAll())
    np.testing.assert_allclose(a.p_intervened, b.p_intervened, rtol=1e-4, atol=1e-7)
    # a bounded cache sees less context, so its scores differ (and it can only go the forced way)
    c = compare_generations(tiny, PROMPT, [], max_new_tokens=9, kv_policy=LastTwo())
    assert not np.allclose(c.p_intervened, c.p_base, atol=1e-4)
    assert type(c.params.kv_policy).__name__ == "LastTwo"


def test_sampling_same_seed_and_validation(tiny, tmp_path):
    s = Sample(temperature=0.8, top_k=10, seed=3)
    r = compare_generations(tiny, PROMPT, [], max_new_tokens=6, strategy=s)
    assert np.array_equal(r.baseline_ids, r.intervened_ids)  # same seed, same model: same sample
    streamed = []
    compare_generations(tiny, PROMPT, [], max_new_tokens=3, on_token=lambda w, t, x: streamed.append((w, t)))
    # both rows decode in one batched pass per step: their tokens stream interleaved
    assert [w for w, _ in streamed] == ["baseline", "intervened"] * 3
    with pytest.raises(InputError, match="neuron 64 is out of range"):
        compare_generations(tiny, PROMPT, [NeuronClamp(0, 64, value=1.0)], max_new_tokens=3)
    with pytest.raises(InputError):
        compare_generations(tiny, PROMPT, [], max_new_tokens=0)
    with pytest.raises(InputError, match="exceeds n_ctx"):
        compare_generations(tiny, PROMPT, [], max_new_tokens=tiny.cfg.n_ctx)
    r.save(tmp_path / "pg", html=True)
    back = Result.load(tmp_path / "pg")
    assert isinstance(back, PlaygroundResult) and np.array_equal(back.p_base, r.p_base)
    assert (tmp_path / "pg" / "delta_p.html").is_file()
    assert back.params == r.params and back.params.strategy == s


def test_saved_comparison_reruns_to_equal_table(tiny, tmp_path):
    ivs = (HeadMask(1, 2, "uniform"), NeuronClamp(0, 5, value=30.0))
    r = compare_generations(tiny, PROMPT, ivs, max_new_tokens=7, strategy=Sample(temperature=0.7, seed=5))
    r.save(tmp_path / "pg")
    back = Result.load(tmp_path / "pg")
    assert back.params.interventions == ivs
    again = back.rerun(tiny)
    pd.testing.assert_frame_equal(again.to_frame(), r.to_frame())
    assert again.intervened_text == r.intervened_text

