"""RazorAttention KV policy (probes/razor.py): exact equality with full attention when
nothing is evicted, per-head masking against a hand-computed attention for both buffers (the
paper's L_h = max(S0, ⌈N/C⌉) and a fixed window), hand-counted buffer lengths and masks, the
compensation token on hand-built scores, GQA head mapping and exact memory accounting."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mechscope.probes.decoding import generate
from mechscope.probes.errors import InputError
from mechscope.probes.interventions import applied
from mechscope.probes.kv_policies import KV_POLICIES
from mechscope.probes.razor import RazorAttention, as_ratio, buffer_length, dropped_mask, drops_any, uniform_window_for
from tests.tiny import tiny_model

PROMPT = [3, 17, 5, 9, 22, 41, 8, 13, 30, 2, 11, 7]


def fake(n_layers=30, n_heads=9, n_kv=3):
    return SimpleNamespace(cfg=SimpleNamespace(n_layers=n_layers, n_heads=n_heads, n_key_value_heads=n_kv,
                                               attn_scores_soft_cap=-1.0, positional_embedding_type="rotary"))


def test_keeping_everything_equals_full_attention(tiny64):
    full = generate(tiny64, PROMPT, max_new_tokens=8, kv_policy="full", stop_at_eos=False)
    # a window longer than the text evicts nothing; so does marking every KV head retrieval
    for policy in (RazorAttention((), n_sink=0, window=64), RazorAttention(tuple((l, h) for l in range(2) for h in range(4)), window=0)):
        got = generate(tiny64, PROMPT, max_new_tokens=8, kv_policy=policy, stop_at_eos=False)
        assert got.new_tokens == full.new_tokens
        assert got.logprobs == pytest.approx(full.logprobs, abs=1e-12)
    # and a small window does change the model (the test above is not vacuous)
    small = generate(tiny64, PROMPT, max_new_tokens=8, kv_policy=RazorAttention((), n_sink=1, window=2), stop_at_eos=False)
    assert max(abs(a - b) for a, b in zip(small.logprobs, full.logprobs)) > 1e-6


def _capture_layer0(model, policy, ids):
    got = {}
    names = ["hook_rot_q", "hook_rot_k", "hook_v", "hook_z", "hook_pattern"]
    hooks = [(f"blocks.0.attn.{n}", (lambda t, hook=None, n=n: got.__setitem__(n, t.detach().clone()))) for n in names]
    with applied(model, extra_hooks=list(policy.hooks(model)) + hooks), torch.no_grad():
        model(torch.tensor([ids]))
    return got


@pytest.mark.parametrize("buffer", ["ratio", "fixed"])
@pytest.mark.parametrize("compensation", [True, False])
def test_retrieval_head_full_others_sinks_buffer(compensation, buffer):
    model = tiny_model(n_key_value_heads=2, dtype=torch.float64)  # 4 query heads: 0,1 → KV 0; 2,3 → KV 1
    S, W, C = 1, 2, 3
    # KV head 1 of layer 0 is the retrieval head
    policy = RazorAttention(((0, 1),), n_sink=S, window=W, compensation=compensation, buffer=buffer, compression_ratio=C)
    got = _capture_layer0(model, policy, PROMPT)
    # recent tokens kept by a head holding t earlier tokens: max(S0, ⌈t / C⌉) or W
    recent = (lambda t: max(W, math.ceil(t / C))) if buffer == "ratio" else (lambda t: W)
    assert [recent(t) for t in range(len(PROMPT))] == ([2] * 7 + [3] * 3 + [4] * 2 if buffer == "ratio" else [2] * 12)
    q, k, v = got["hook_rot_q"][0], got["hook_rot_k"][0], got["hook_v"][0]  # [T, H or Hkv, d]
    T, d = q.shape[0], q.shape[-1]
    for h in range(4):
        kv = h // 2
        for t in range(T):
            s = (k[: t + 1, kv] @ q[t, h]) / d ** 0.5
            if kv == 1:  # retrieval: ordinary causal attention
                want = torch.softmax(s, 0) @ v[: t + 1, kv]
            else:
                kept = [j for j in range(t + 1) if j < S or j >= t - recent(t)]
                dropped = [j for j in range(t + 1) if j not in kept]
                num = (torch.exp(s[kept])[:, None] * v[kept, kv]).sum(0)
                den = torch.exp(s[kept]).sum()
                if compensation and dropped:
                    s_hat = (k[dropped, kv].mean(0) @ q[t, h]) / d ** 0.5
                    num = num + len(dropped) * torch.exp(s_hat) * v[dropped, kv].mean(0)
                    den = den + len(dropped) * torch.exp(s_hat)
                want = num / den
                if not compensation and dropped:  # evicted keys get exactly zero weight
                    assert got["hook_pattern"][0, h, t, dropped].abs().max().item() == 0
            torch.testing.assert_close(got["hook_z"][0, t, h], want, rtol=1e-10, atol=1e-12)


def test_compensation_token_on_hand_built_scores():
    model = tiny_model(n_layers=1, n_heads=2, dtype=torch.float64)
    policy = RazorAttention(((0, 0),), n_sink=1, window=2)  # head 0 retrieval, head 1 streaming
    (_, hook), = policy.hooks(model)
    # one query at position 5 over keys 0..5: S = 1, W = 2 → dropped keys 1, 2
    row = torch.tensor([0.0, 1.0, 3.0, 7.0, 2.0, 5.0], dtype=torch.float64)
    scores = torch.stack([row, row])[None, :, None, :]  # [1, 2 heads, 1 query, 6 keys]
    out = hook(scores)
    assert out[0, 0, 0].tolist() == row.tolist()  # the retrieval head is untouched
    assert out[0, 1, 0].tolist() == [0.0, 2.0, 2.0, 7.0, 2.0, 5.0]  # dropped → their mean, (1 + 3) / 2
    # softmax over the rewritten scores = attention with one compensation token of weight n_d = 2
    v = torch.tensor([[1.0], [2.0], [4.0], [8.0], [16.0], [32.0]], dtype=torch.float64)
    e = math.exp
    want = (e(0) * 1 + e(7) * 8 + e(2) * 16 + e(5) * 32 + 2 * e(2) * 3.0) / (e(0) + e(7) + e(2) + e(5) + 2 * e(2))
    assert (torch.softmax(out[0, 1, 0], 0) @ v)[0].item() == pytest.approx(want, rel=1e-12)
    off = RazorAttention(((0, 0),), n_sink=1, window=2, compensation=False)
    (_, hook_off), = off.hooks(model)
    assert hook_off(scores)[0, 1, 0].tolist() == [0.0, float("-inf"), float("-inf"), 7.0, 2.0, 5.0]


def test_dropped_mask_by_hand():
    # 2 queries (positions 4, 5) over 6 keys, S = 1, W = 2: t=4 drops 1; t=5 drops 1, 2
    assert dropped_mask(2, 6, 1, 2).int().tolist() == [[0, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0]]
    # the paper's buffer, S = 1, S0 = 2, C = 3, queries at t = 8..11 over 12 keys:
    # L(8) = L(9) = ⌈9/3⌉ = 3, L(10) = L(11) = ⌈10/3⌉ = 4 → drop [1, t − L(t)): 1..4, 1..5, 1..5, 1..6
    assert dropped_mask(4, 12, 1, 2, ratio=as_ratio(3)).int().tolist() == [
        [0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]]
    # the fixed window W = 2 on the same queries drops more: 1..5, 1..6, 1..7, 1..8
    assert dropped_mask(4, 12, 1, 2).int().tolist() == [
        [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]]


def test_buffer_lengths_by_hand():
    # L_h = max(S0, ⌈N / C⌉): S0 = 2, C = 3
    assert [buffer_length(n, 2, as_ratio(3)) for n in range(13)] == [2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert [buffer_length(n, 2) for n in range(13)] == [2] * 13  # fixed
    assert [buffer_length(n, 0, as_ratio(2.5)) for n in (4, 5, 6, 10, 11)] == [2, 2, 3, 4, 5]
    assert buffer_length(33, 0, as_ratio(3.3)) == 10  # a decimal C is exact: 33 / 3.3 is 10, not 10.000…1
    # the policy's defaults: 4 sinks, S0 = 252, C = 5, the paper's buffer
    p = RazorAttention()
    assert (p.n_sink, p.window, p.buffer, p.compression_ratio) == (4, 252, "ratio", 5.0)
    assert [p.buffer_length(n) for n in (100, 1260, 1261, 1265, 1266, 4000)] == [252, 252, 253, 253, 254, 800]
    assert RazorAttention(buffer="fixed").buffer_length(4000) == 252


@pytest.mark.parametrize("buffer", ["ratio", "fixed"])
def test_cached_generation_equals_recompute_loop(buffer):
    """Under the KV cache, queries arrive one at a time: the hook must place them at their
    absolute positions (and, for the paper's buffer, grow it with them: L = 3 … 6 over the
    18 tokens). Compare with a no-cache loop that reruns the whole text each step."""
    model = tiny_model(n_key_value_heads=2, dtype=torch.float64)
    policy = RazorAttention(((1, 0),), n_sink=2, window=3, buffer=buffer, compression_ratio=3)
    got = generate(model, PROMPT, max_new_tokens=6, kv_policy=policy, stop_at_eos=False)
    ids = list(PROMPT)
    with applied(model, extra_hooks=policy.hooks(model)), torch.no_grad():
        for _ in range(6):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert list(got.new_tokens) == ids[len(PROMPT):]


def test_query_heads_map_to_kv_heads_and_memory_is_exact():
    m = fake()  # SmolLM2-135M: 30 layers × 9 query heads, 3 KV heads (groups of 3)
    p = RazorAttention(((0, 0), (0, 1), (5, 4)), head_kind="query")  # → KV heads (0, 0), (5, 1)
    assert p.kv_heads(m) == {(0, 0), (5, 1)}
    assert p.streaming_query_heads(m)[0] == [3, 4, 5, 6, 7, 8]
    assert p.streaming_query_heads(m)[5] == [0, 1, 2, 6, 7, 8]
    # after 1000 tokens: 2 KV heads × 1000 + 88 × (4 + max(252, 1000/5) + 1 compensation)
    assert p.kept_entries(m, 1000) == 2000 + 88 * 257
    assert p.kv_fraction(m, 1000) == pytest.approx(24616 / 90000, rel=1e-15)
    assert p.kept_entries(m, 100) == 90 * 100  # nothing evicted yet, no compensation token
    # the paper's buffer grows with N: after 5000 tokens 4 + 1000 + 1 per streaming head; 2003 → ⌈400.6⌉ = 401
    assert p.kept_entries(m, 5000) == 10000 + 88 * 1005
    assert p.kv_fraction(m, 5000) == pytest.approx(98440 / 450000, rel=1e-15)
    assert p.kept_entries(m, 2003) == 4006 + 88 * 406
    fixed = RazorAttention(((0, 0), (0, 1), (5, 4)), head_kind="query", buffer="fixed")
    assert fixed.kept_entries(m, 1000) == 2000 + 88 * 257 and fixed.kept_entries(m, 5000) == 10000 + 88 * 257
    assert RazorAttention((), n_sink=4, window=252, compensation=False).kept_entries(m, 5000) == 90 * 1004
    u = uniform_window_for(m, p, 1000)  # 24616 // 90 = 273 entries per head = 4 sinks + 269
    assert u == RazorAttention((), n_sink=4, window=269, compensation=False, buffer="fixed")
    assert u.kept_entries(m, 1000) <= p.kept_entries(m, 1000)
    u = uniform_window_for(m, p, 5000)  # 98440 // 90 = 1093 = 4 + 1089, fixed whatever the length
    assert u == RazorAttention((), n_sink=4, window=1089, compensation=False, buffer="fixed")


@pytest.mark.parametrize("buffer", ["ratio", "fixed"])
def test_memory_accounting_matches_the_keys_attended(buffer):
    """The entries a streaming head holds (kept_entries) equal the keys the masked attention
    actually gives weight to, counted on the model's attention pattern at every position."""
    model = tiny_model(n_layers=1, n_heads=2, dtype=torch.float64)
    ids = list(range(1, 41))
    S, W, C = 2, 3, 4
    for comp in (False, True):
        policy = RazorAttention(((0, 0),), n_sink=S, window=W, compensation=comp, buffer=buffer, compression_ratio=C)
        pattern = _capture_layer0(model, policy, ids)["hook_pattern"][0, 1]  # streaming head 1: [T, T]
        for t in range(len(ids)):
            recent = max(W, math.ceil(t / C)) if buffer == "ratio" else W
            held = min(t, S + recent)  # the sinks and the recent tokens among the t earlier ones
            dropped = t - held
            weighted = int((pattern[t, :t] > 0).sum())  # keys before t with weight (a dropped key has the ŝ weight)
            assert weighted == (t if comp else held)
            # one head's entries: what it holds, + 1 compensation token standing for all dropped keys
            assert policy.streaming_entries(t) == held + (1 if comp and dropped else 0)
            if t:
                assert policy.kv_fraction(model, t) == pytest.approx(
                    (t + policy.streaming_entries(t)) / (2 * t), rel=1e-15)


def test_registered_and_round_trips():
    for p in (RazorAttention(((2, 1), (0, 0)), n_sink=3, window=10, head_kind="query", compression_ratio=2.5),
              RazorAttention(((2, 1),), window=10, buffer="fixed")):
        back = KV_POLICIES.from_dict(p.to_dict())
        assert back == p and back.heads[-1] == (2, 1) and back.buffer == p.buffer
    assert RazorAttention(compression_ratio=4).compression_ratio == 4.0
    assert RazorAttention(window=64).describe() == "razor: 0 retrieval kv heads full; sinks 4 + buffer max(64, N/5) + compensation"
    assert RazorAttention(window=64, buffer="fixed", compensation=False).describe().endswith("sinks 4 + fixed window 64")


@pytest.mark.parametrize("kwargs, msg", [
    (dict(heads=((0, 3),)), "outside the model"),
    (dict(heads=((2, 0),)), "outside the model"),
    (dict(window=-1), "window"),
    (dict(head_kind="both"), "head_kind"),
    (dict(buffer="grow"), "buffer"),
    (dict(compression_ratio=0.5), "compression_ratio"),
    (dict(compression_ratio=float("nan")), "compression_ratio"),
    (dict(compression_ratio=True), "compression_ratio"),
])
def test_bad_input(tiny_gqa, kwargs, msg):
    with pytest.raises(InputError, match=msg):
        p = RazorAttention(**kwargs)
        generate(tiny_gqa, [1, 2, 3], max_new_tokens=1, kv_policy=p)


def test_drops_any_agrees_with_the_mask():
    for ratio in (None, as_ratio(1), as_ratio(2), as_ratio(2.5), as_ratio(3)):
        for n_q in range(1, 4):
            for n_k in range(n_q, 14):
                for n_sink in range(4):
                    for window in range(5):
                        mask = dropped_mask(n_q, n_k, n_sink, window, ratio=ratio)
                        assert drops_any(n_k, n_sink, window, ratio) == bool(mask.any())
