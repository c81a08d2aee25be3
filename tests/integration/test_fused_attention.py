"""Fused attention and blockwise pattern reductions on the embedded SmolLM2 (30 layers,
9 query heads sharing 3 KV heads): the loaded model takes the fused path, its logits and
greedy tokens equal the materialised path's, a pattern hook is still called on every layer,
and the reductions computed from q and k equal those of the real materialised patterns."""

from __future__ import annotations

import pytest
import torch

from mechscope.probes import capture, fused_attention as fa
from mechscope.probes.act import column_mean
from mechscope.probes.attention_reductions import QKReducer, Scoring, pattern_stats
from mechscope.probes.datasets import load_long_text
from mechscope.probes.decoding import generate

# float32 through 30 layers: the two paths differ by ~1e-6 of the logits' scale (measured
# 5e-5 on logits of magnitude 35); 2^-16 of the scale leaves a 10× margin and still fails
# on any masking, scaling or position error (O(1) changes)
REL = 2.0**-16


def long_ids(model, n: int) -> list[int]:
    from mechscope.probes.tokens import text_ids

    return text_ids(model, load_long_text("paradise_lost"))[:n]


@pytest.mark.integration
def test_loaded_model_is_fused_and_equals_materialised(smollm2):
    model = smollm2.model
    state = fa.state_of(model)
    assert state is not None and state.enabled and fa.fallback_reasons(model) == {}
    ids = torch.tensor([long_ids(model, 300)])
    before = dict(state.calls)
    with torch.no_grad():
        fused = model(ids)
        assert state.calls["fused"] - before["fused"] == 30
        with fa.materialised(model):
            ref = model(ids)
    assert state.calls["materialised"] - before["materialised"] == 30
    assert (fused - ref).abs().max() < REL * ref.abs().max()


@pytest.mark.integration
def test_generate_greedy_tokens_equal_fused_or_materialised(smollm2):
    """probes.decoding.generate uses the fused path with no call-site change: 300-token
    prompt, 32 greedy tokens, KV cache — the same tokens as TransformerLens' attention."""
    model = smollm2.model
    prompt = long_ids(model, 300)
    state = fa.state_of(model)
    before = dict(state.calls)
    fused = generate(model, prompt, max_new_tokens=32, strategy="greedy", stop_at_eos=False)
    assert state.calls["fused"] - before["fused"] == 32 * 30 and state.calls["materialised"] == before["materialised"]
    with fa.materialised(model):
        ref = generate(model, prompt, max_new_tokens=32, strategy="greedy", stop_at_eos=False)
    assert fused.new_tokens == ref.new_tokens
    assert max(abs(a - b) for a, b in zip(fused.logprobs, ref.logprobs)) < 1e-3


@pytest.mark.integration
def test_pattern_reducer_still_sees_every_layer(smollm2):
    """A reducer on hook_pattern (as the sink analysis registers) is called on all 30 layers
    with the full pattern, and those layers run materialised."""
    model = smollm2.model
    state = fa.state_of(model)
    shapes = []
    reducers = {f"blocks.{layer}.attn.hook_pattern": (lambda p, site, batch: shapes.append(tuple(p.shape)))
                for layer in range(30)}
    before = dict(state.calls)
    capture.run(model, [long_ids(model, 40)], reducers=reducers)
    assert shapes == [(1, 9, 40, 40)] * 30
    assert state.calls["materialised"] - before["materialised"] == 30 and state.calls["fused"] == before["fused"]


@pytest.mark.integration
def test_reductions_from_qk_equal_the_real_patterns(smollm2):
    """Column means (sinks / ACT), top-1 keys (retrieval) and first-key mass (dormancy)
    from the rotated q and k of every layer, blockwise, against the materialised patterns
    of the same pass; right-padded second row."""
    model = smollm2.model
    ids = long_ids(model, 160)
    seqs = [ids, ids[40:140]]
    lengths = torch.tensor([160, 100])
    got: dict = {}
    ref: dict = {}

    def on_qk(layer, q, k, batch):
        got[layer] = pattern_stats(q, k, Scoring.of(model, layer), lengths=batch.lengths, block=48)

    def on_pattern(p, site, batch):
        ref[site.layer] = (column_mean(p, 0, batch.lengths), p)

    reducers = dict(QKReducer(model, on_qk).reducers())
    reducers.update({f"blocks.{layer}.attn.hook_pattern": on_pattern for layer in range(30)})
    capture.run(model, seqs, reducers=reducers)
    assert sorted(got) == sorted(ref) == list(range(30))
    checked = 0
    for layer in range(30):
        mean, p = ref[layer]
        s = got[layer]
        assert (s.column_mean() - mean).abs().max() < 1e-5
        assert (s.first - p[..., 0]).abs().max() < 1e-5
        # top-1: equal wherever the pattern's best key beats the runner-up by more than rounding
        top2 = p.topk(2, dim=-1).values
        clear = (top2[..., 0] - top2[..., 1]) > 1e-5
        assert torch.equal(s.top1[clear], p.argmax(-1)[clear])
        checked += int(clear.sum())
    assert checked > 0.95 * 30 * 2 * 9 * 160
