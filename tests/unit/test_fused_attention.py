"""probes.fused_attention: the SDPA path equals TransformerLens' materialised attention
(float64 tiny models: MHA, GQA, partial and adjacent-pair rotary, local windows with QK-norm
as in Gemma 3, with and without a padded KV cache), every other hook point sees the same
tensors, and any hook on hook_attn_scores / hook_pattern switches the layer back to the
materialised path."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mechscope.probes import fused_attention as fa
from mechscope.probes.decoding import Greedy, generate
from mechscope.probes.interventions import HeadMask, applied
from mechscope.probes.kv_policies import keep_cache_positions, new_cache
from tests.tiny import tiny_model

# float64: the two paths differ only in rounding (~1e-15 relative); 1e-10 leaves room for
# the tiny models' amplification and still catches any masking or scaling mistake (O(1e-2))
ATOL = 1e-10


def tokens(batch=2, n=20, vocab=50, seed=0):
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def gemma3_like(dtype=torch.float64, window=4, softcap=None):
    """Two layers shaped like Gemma 3: local (window) then global attention, one KV head for
    four query heads, QK-norm, separate local rotary base, norms before and after."""
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=64, n_key_value_heads=1,
        act_fn="gelu_pytorch_tanh", gated_mlp=True, normalization_type="RMS", final_rms=True,
        positional_embedding_type="rotary", rotary_dim=8, rotary_base=1_000_000, rotary_base_local=10_000,
        use_qk_norm=True, use_normalization_before_and_after=True, use_local_attn=True,
        attn_types=["local", "global"], window_size=window, default_prepend_bos=False, device="cpu", dtype=dtype,
        **({"attn_scores_soft_cap": softcap} if softcap is not None else {}),
    )
    model = HookedTransformer(cfg, move_to_device=False)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 2.0 / p.shape[-1] ** 0.5)
            else:
                p.normal_(1.0, 0.3)
    return model.eval()


def both(model, fn):
    """fn() with the fused path, then under fa.materialised; also returns the call counts."""
    state = fa.install(model, True)
    before = dict(state.calls)
    fused = fn()
    mid = dict(state.calls)
    with fa.materialised(model):
        ref = fn()
    after = dict(state.calls)
    counts = {k: (mid[k] - before[k], after[k] - mid[k]) for k in before}
    return fused, ref, counts


MODELS = {
    "mha": lambda: tiny_model(dtype=torch.float64),
    "gqa": lambda: tiny_model(n_key_value_heads=2, dtype=torch.float64),
    "partial_rotary": lambda: tiny_model(rotary_dim=4, n_key_value_heads=2, dtype=torch.float64),
    "adjacent_pairs": lambda: tiny_model(rotary_dim=6, adjacent_pairs=True, dtype=torch.float64),
    "absolute_pos": lambda: tiny_model(rotary=False, dtype=torch.float64),
    "gemma3_like": gemma3_like,
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_fused_forward_equals_materialised(kind):
    model = MODELS[kind]()
    toks = tokens(n=24)
    with torch.no_grad():
        fused, ref, counts = both(model, lambda: model(toks))
    n = model.cfg.n_layers
    assert counts["fused"] == (n, 0) and counts["materialised"] == (0, n)
    assert (fused - ref).abs().max() < ATOL
    assert ref.abs().max() > 1.0  # a real comparison, not two zeros


@pytest.mark.parametrize("kind", ["mha", "gqa", "partial_rotary", "gemma3_like"])
def test_fused_kv_cache_steps_equal_materialised(kind):
    """Prefill, a multi-token chunk at an offset (explicit causal mask), then single tokens;
    the local window (4) is shorter than the cache, so it is applied through the mask."""
    model = MODELS[kind]()
    toks = tokens(batch=2, n=18, seed=3)

    def run():
        cache = new_cache(model, 2)
        outs = []
        for a, b in [(0, 9), (9, 13), (13, 14), (14, 15), (15, 18)]:
            piece = toks[:, a:b]
            outs.append(model(piece, past_kv_cache=cache, attention_mask=torch.ones_like(piece)))
        return torch.cat(outs, 1)

    with torch.no_grad():
        fused, ref, counts = both(model, run)
        whole = model(toks)  # no cache at all (fused)
    assert counts["fused"][0] == 5 * model.cfg.n_layers and counts["materialised"] == (0, 5 * model.cfg.n_layers)
    assert (fused - ref).abs().max() < ATOL
    assert (fused - whole).abs().max() < ATOL


@pytest.mark.parametrize("kind", ["gqa", "partial_rotary", "gemma3_like"])
def test_fused_left_padded_cache_equals_materialised(kind):
    """Row 0 left-padded by 5 (pad keys masked, positions unpadded, pad queries see no key
    and give z = 0), then cached steps on the padded cache."""
    model = MODELS[kind]()
    toks = tokens(batch=2, n=12, seed=5)
    mask = torch.ones_like(toks)
    mask[0, :5] = 0
    steps = tokens(batch=2, n=4, seed=6)
    z_name = "blocks.0.attn.hook_z"

    def run():
        cache = new_cache(model, 2)
        zs = []
        with model.hooks(fwd_hooks=[(z_name, lambda z, hook: zs.append(z.clone()))]):
            outs = [model(toks, past_kv_cache=cache, attention_mask=mask)]
            for t in range(steps.shape[1]):
                piece = steps[:, t : t + 1]
                outs.append(model(piece, past_kv_cache=cache, attention_mask=torch.ones_like(piece)))
        return torch.cat(outs, 1), zs[0]

    with torch.no_grad():
        (fused, z_fused), (ref, z_ref), counts = both(model, run)
    assert counts["fused"][0] == 5 * model.cfg.n_layers
    assert (fused[1] - ref[1]).abs().max() < ATOL
    assert (fused[0, 5:] - ref[0, 5:]).abs().max() < ATOL  # pad positions' logits are junk in both
    assert torch.equal(z_fused[0, :5], torch.zeros_like(z_fused[0, :5]))  # queries that see no key
    assert torch.equal(z_ref[0, :5], torch.zeros_like(z_ref[0, :5]))
    assert (z_fused - z_ref).abs().max() < ATOL


def test_other_hook_points_see_the_same_tensors():
    """q, k, v, rotated q/k (whole cache), z and per-head results fire in both paths with
    equal values; hook_z edits still take effect on the fused path."""
    model = tiny_model(n_key_value_heads=2, dtype=torch.float64)
    model.cfg.use_attn_result = True
    points = ["q", "k", "v", "rot_q", "rot_k", "z", "result"]
    names = [f"blocks.1.attn.hook_{p}" for p in points] + ["blocks.1.hook_attn_out", "blocks.1.hook_resid_post"]
    toks = tokens(batch=1, n=10, seed=2)

    def run():
        seen = {}
        cache = new_cache(model, 1)

        def keep(t, hook):
            seen.setdefault(hook.name, []).append(t.clone())

        def halve_z(z, hook):  # an edit on hook_z must reach the output
            return z * 0.5

        with model.hooks(fwd_hooks=[(n, keep) for n in names] + [("blocks.0.attn.hook_z", halve_z)]):
            model(toks[:, :7], past_kv_cache=cache, attention_mask=torch.ones_like(toks[:, :7]))
            out = model(toks[:, 7:], past_kv_cache=cache, attention_mask=torch.ones_like(toks[:, 7:]))
        return seen, out

    with torch.no_grad():
        (fused, out_f), (ref, out_r), counts = both(model, run)
    assert counts["materialised"] == (0, 4)
    assert set(fused) == set(names)
    for n in names:
        assert [t.shape for t in fused[n]] == [t.shape for t in ref[n]], n
        for a, b in zip(fused[n], ref[n]):
            assert (a - b).abs().max() < ATOL, n
    assert fused["blocks.1.attn.hook_rot_k"][1].shape[1] == 10  # the whole cache's keys
    assert (out_f - out_r).abs().max() < ATOL
    with torch.no_grad():
        plain = model(toks)
    assert (plain[:, -1] - out_f[:, -1]).abs().max() > 1e-3  # the z edit changed the output


@pytest.mark.parametrize("how", ["add_hook", "hooks_context", "run_with_cache", "torch_hook", "backward_hook"])
@pytest.mark.parametrize("point", ["hook_pattern", "hook_attn_scores"])
def test_pattern_hook_switches_that_layer_to_materialised(how, point):
    model = tiny_model(n_layers=3, n_key_value_heads=2, dtype=torch.float64)
    state = fa.install(model, True)
    toks = tokens(batch=1, n=9)
    name = f"blocks.1.attn.{point}"
    seen = []

    def hook(t, hook=None):
        seen.append(t.shape)

    with torch.no_grad():
        ref = model(toks)
        before = dict(state.calls)
        if how == "add_hook":
            model.add_hook(name, hook)
            out = model(toks)
            model.reset_hooks()
        elif how == "hooks_context":
            with model.hooks(fwd_hooks=[(name, hook)]):
                out = model(toks)
        elif how == "run_with_cache":
            out, cache = model.run_with_cache(toks, names_filter=[name])
            seen.append(cache[name].shape)
        elif how == "torch_hook":
            handle = model.hook_dict[name].register_forward_hook(lambda m, i, o: seen.append(o.shape))
            out = model(toks)
            handle.remove()
        if how != "backward_hook":
            assert seen == [torch.Size([1, 4, 9, 9])]
            assert state.calls["materialised"] - before["materialised"] == 1  # layer 1 only
            assert state.calls["fused"] - before["fused"] == 2
            assert (out - ref).abs().max() < ATOL
    if how == "backward_hook":
        model.add_hook(name, lambda g, hook: seen.append(g.shape), dir="bwd")
        model(toks).sum().backward()
        model.reset_hooks()
        assert seen == [torch.Size([1, 4, 9, 9])]
        assert state.calls["materialised"] - before["materialised"] == 1
    # hooks gone: the next call is fused everywhere again
    before = dict(state.calls)
    with torch.no_grad():
        model(toks)
    assert state.calls["fused"] - before["fused"] == 3 and state.calls["materialised"] == before["materialised"]


def test_global_module_hook_forces_materialised():
    model = tiny_model(dtype=torch.float64)
    state = fa.install(model, True)
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        with torch.no_grad():
            model(tokens(n=5))
    finally:
        handle.remove()
    assert state.calls == {"fused": 0, "materialised": 2}


def test_head_mask_uses_the_pattern_path_and_still_applies():
    """A uniform head mask edits hook_attn_scores: its layer runs materialised, and the
    masked output equals the all-materialised masked output (and differs from unmasked)."""
    model = tiny_model(n_layers=3, n_key_value_heads=2, dtype=torch.float64)
    state = fa.install(model, True)
    toks = tokens(batch=1, n=12)
    with torch.no_grad():
        plain = model(toks)
        before = dict(state.calls)
        with applied(model, [HeadMask(1, 2)]):
            masked = model(toks)
        assert state.calls["materialised"] - before["materialised"] == 1
        assert state.calls["fused"] - before["fused"] == 2
        with fa.materialised(model), applied(model, [HeadMask(1, 2)]):
            ref = model(toks)
        before = dict(state.calls)
        with applied(model, [HeadMask(1, 2, mode="zero")]):  # hook_z only: stays fused
            zeroed = model(toks)
        assert state.calls["fused"] - before["fused"] == 3
        with fa.materialised(model), applied(model, [HeadMask(1, 2, mode="zero")]):
            zeroed_ref = model(toks)
    assert (masked - ref).abs().max() < ATOL
    assert (masked - plain).abs().max() > 1e-3
    assert (zeroed - zeroed_ref).abs().max() < ATOL


def test_rotated_key_reuse_survives_trims_and_edits():
    """The rotated cache kept on the entry is reused only while the entry's keys are the
    ones it rotated: after a StreamingLLM-style trim (positions re-assigned by place) and
    an in-place edit of the cached keys, fused steps still equal materialised ones."""
    model = tiny_model(n_key_value_heads=2, dtype=torch.float64)
    toks = tokens(batch=1, n=16, seed=9)

    def run():
        cache = new_cache(model, 1)
        outs = [model(toks[:, :8], past_kv_cache=cache, attention_mask=torch.ones_like(toks[:, :8]))]
        for t in range(8, 16):
            if t == 11:
                keep_cache_positions(cache, torch.tensor([0, 1, 6, 7, 8, 9, 10]))
            if t == 13:
                for e in cache.entries:
                    e.past_keys[:, 2] = e.past_keys[:, 3]  # in place: same tensor, new version
            piece = toks[:, t : t + 1]
            outs.append(model(piece, past_kv_cache=cache, attention_mask=torch.ones_like(piece)))
        return torch.cat(outs, 1)

    with torch.no_grad():
        fused, ref, counts = both(model, run)
    assert counts["fused"][0] == 9 * model.cfg.n_layers
    assert (fused - ref).abs().max() < ATOL


def test_rotated_key_reuse_rotates_only_new_keys(monkeypatch):
    """On an unpadded cached step the cached keys are not rotated again."""
    model = tiny_model(n_layers=1, dtype=torch.float64)
    fa.install(model, True)
    toks = tokens(batch=1, n=10)
    rotated = []
    attn = model.blocks[0].attn
    original, fast = attn.apply_rotary, fa._rotate

    def spy(x, *args, **kwargs):
        rotated.append(x.shape[1])
        return original(x, *args, **kwargs)

    def fast_spy(self, x, offset):
        rotated.append(x.shape[1])
        return fast(self, x, offset)

    monkeypatch.setattr(attn, "apply_rotary", spy)
    monkeypatch.setattr(fa, "_rotate", fast_spy)
    cache = new_cache(model, 1)
    with torch.no_grad():
        model(toks[:, :8], past_kv_cache=cache, attention_mask=torch.ones_like(toks[:, :8]))
        model(toks[:, 8:9], past_kv_cache=cache, attention_mask=torch.ones_like(toks[:, :1]))
        with fa.materialised(model):
            model(toks[:, 9:10], past_kv_cache=cache, attention_mask=torch.ones_like(toks[:, :1]))
    assert rotated == [8, 8, 1, 1, 1, 10]  # (q, k) prefill; fused step: q, new key; TL: q, whole cache


def test_gemma_config_branches():
    """Local and global layers of a Gemma-3-like model are both fused (the window as a
    mask); a soft-capped model (Gemma 2) falls back on every layer, and says why."""
    model = gemma3_like()
    fa.install(model, True)
    assert fa.fallback_reasons(model) == {}
    assert [model.blocks[i].attn.attn_type for i in range(2)] == ["local", "global"]
    capped = gemma3_like(softcap=50.0)
    state = fa.install(capped, True)
    reasons = fa.fallback_reasons(capped)
    assert set(reasons) == {0, 1} and all("soft-capping" in r for r in reasons.values())
    with torch.no_grad():
        out = capped(tokens(n=10))
    assert state.calls == {"fused": 0, "materialised": 2}
    with torch.no_grad():
        fa.uninstall(capped)
        assert torch.equal(capped(tokens(n=10)), out)


def test_window_longer_than_keys_is_plain_causal():
    """A local layer whose window covers every key needs no mask: same as global."""
    model = gemma3_like(window=32)
    toks = tokens(n=20)
    with torch.no_grad():
        fused, ref, _ = both(model, lambda: model(toks))
    assert (fused - ref).abs().max() < ATOL


def test_env_switch_and_uninstall(monkeypatch):
    model = tiny_model(dtype=torch.float64)
    keys, modules, hooks = list(model.state_dict()), [n for n, _ in model.named_modules()], list(model.hook_dict)
    fa.install(model, True)
    assert list(model.state_dict()) == keys and [n for n, _ in model.named_modules()] == modules
    assert list(model.hook_dict) == hooks
    monkeypatch.setenv(fa.ENV, "0")
    state = fa.install(model)
    with torch.no_grad():
        model(tokens(n=5))
    assert state.calls == {"fused": 0, "materialised": 2} and not fa.will_fuse(model.blocks[0].attn)
    monkeypatch.setenv(fa.ENV, "1")
    fa.install(model)
    assert fa.will_fuse(model.blocks[0].attn)
    fa.uninstall(model)
    assert "forward" not in model.blocks[0].attn.__dict__ and fa.state_of(model) is None
    assert fa.fallback_reasons(model) == {0: "not installed", 1: "not installed"}


def test_generate_tokens_equal_fused_or_not():
    model = tiny_model(n_layers=3, n_key_value_heads=2, dtype=torch.float64)
    prompt = tokens(batch=1, n=20, seed=4)[0].tolist()
    fa.install(model, True)
    fused = generate(model, prompt, max_new_tokens=12, strategy=Greedy(), stop_at_eos=False)
    with fa.materialised(model):
        ref = generate(model, prompt, max_new_tokens=12, strategy=Greedy(), stop_at_eos=False)
    assert fused.new_tokens == ref.new_tokens
    assert max(abs(a - b) for a, b in zip(fused.logprobs, ref.logprobs)) < 1e-9


def test_out_of_memory_names_what_to_lower(monkeypatch):
    model = tiny_model()
    fa.install(model, True)

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(fa.F, "scaled_dot_product_attention", oom)
    with pytest.raises(fa.AttentionMemoryError, match=r"layer 0's attention .*lower the batch size or the prompt length\.$"):
        with torch.no_grad():
            model(tokens(n=6))
    # on the materialised path the message also says how big the pattern is and how to avoid it
    with pytest.raises(fa.AttentionMemoryError, match=r"\[batch × 4 heads × 6 × 6\] pattern.*detach hooks"):
        with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda p, hook: oom())]):
            model(tokens(n=6))


def test_rows_that_see_no_key_give_zero_whatever_the_backend(monkeypatch):
    """Some SDPA backends return NaN (softmax of an all −inf row) where TransformerLens
    returns 0; the fused path zeroes those rows itself."""
    model = tiny_model(n_key_value_heads=2, dtype=torch.float64)
    toks = tokens(batch=2, n=8, seed=5)
    mask = torch.ones_like(toks)
    mask[0, :3] = 0
    real_sdpa = fa.F.scaled_dot_product_attention

    def nan_on_empty_rows(q, k, v, attn_mask=None, **kw):
        out = real_sdpa(q, k, v, attn_mask=attn_mask, **kw)
        return out.masked_fill(~attn_mask.any(-1)[..., None], float("nan")) if attn_mask is not None else out

    monkeypatch.setattr(fa.F, "scaled_dot_product_attention", nan_on_empty_rows)
    run = lambda: model(toks, past_kv_cache=new_cache(model, 2), attention_mask=mask)  # noqa: E731
    with torch.no_grad():
        fused, ref, counts = both(model, run)
    assert counts["fused"] == (2, 0)
    assert not torch.isnan(fused).any()
    assert (fused[1] - ref[1]).abs().max() < ATOL and (fused[0, 3:] - ref[0, 3:]).abs().max() < ATOL


def test_layer0_hook_tensors_bitwise_equal_in_float32():
    """Before any attention output mixes in, the fused path's q, k, v and rotated q/k
    (fast projection and rotation, rotated-key reuse) are TransformerLens' exact numbers."""
    model = tiny_model(rotary_dim=6, n_key_value_heads=2)
    toks = tokens(batch=1, n=12, seed=12)
    names = [f"blocks.0.attn.hook_{p}" for p in ("q", "k", "v", "rot_q", "rot_k")]

    def run():
        seen = {}
        cache = new_cache(model, 1)
        with model.hooks(fwd_hooks=[(n, lambda t, hook: seen.setdefault(hook.name, []).append(t.clone())) for n in names]):
            for a, b in [(0, 8), (8, 9), (9, 10), (10, 12)]:
                model(toks[:, a:b], past_kv_cache=cache, attention_mask=torch.ones_like(toks[:, a:b]))
        return seen

    with torch.no_grad():
        fused, ref, _ = both(model, run)
    for n in names:
        assert len(fused[n]) == 4 and all(torch.equal(a, b) for a, b in zip(fused[n], ref[n])), n


def test_ln1_is_computed_once_unless_hooked(monkeypatch):
    """TransformerLens normalises the attention input three times (query, key, value);
    the fused install computes it once when nothing hooks inside ln1, and keeps
    TransformerLens' three calls (three hook firings) when something does."""
    from transformer_lens.components import RMSNorm

    model = tiny_model(n_layers=2, dtype=torch.float64)
    toks = tokens(batch=1, n=6)
    calls = []
    original = RMSNorm.forward

    def counting(self, x):
        calls.append(self is model.blocks[0].ln1)
        return original(self, x)

    monkeypatch.setattr(RMSNorm, "forward", counting)
    with torch.no_grad():
        ref = model(toks)  # not installed: TransformerLens' own calls
        assert calls.count(True) == 3
        fa.install(model, True)
        calls.clear()
        out = model(toks)
        assert calls.count(True) == 0  # nothing hooked in the block: probes.fused_block normalises inline
        assert (out - ref).abs().max() < ATOL
        calls.clear()
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_mid", lambda t, hook: None)]):
            out = model(toks)  # a hook in the block: TransformerLens' block forward, ln1 once
        assert calls.count(True) == 1
        assert "_mechscope_memo" not in model.blocks[0].ln1.__dict__  # nothing kept after the pass
        assert (out - ref).abs().max() < ATOL
        seen = []
        calls.clear()
        with model.hooks(fwd_hooks=[("blocks.0.ln1.hook_normalized", lambda t, hook: seen.append(1))]):
            model(toks)
        assert calls.count(True) == 3 and len(seen) == 3
        calls.clear()
        with fa.materialised(model):
            model(toks)
        assert calls.count(True) == 3


def test_repeated_kv_heads_where_sdpa_has_no_grouped_kernel(monkeypatch):
    """Off the CPU the KV heads are repeated before SDPA instead of ``enable_gqa``: the same
    attention (checked here by treating the CPU as such a device), with and without masks."""
    monkeypatch.setattr(fa, "NATIVE_GQA_DEVICES", ())
    calls = []
    real = fa.F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        calls.append((q.shape[1], k.shape[1], kw["enable_gqa"]))
        return real(q, k, v, **kw)

    monkeypatch.setattr(fa.F, "scaled_dot_product_attention", spy)
    model = MODELS["gemma3_like"]()
    toks = tokens(batch=2, n=12, seed=3)
    mask = torch.ones_like(toks)
    mask[0, :3] = 0

    def run():
        cache = new_cache(model, 2)
        out = [model(toks[:, :9], past_kv_cache=cache, attention_mask=mask[:, :9])]
        out.append(model(toks[:, 9:], past_kv_cache=cache, attention_mask=mask[:, 9:]))
        return torch.cat(out, 1)

    with torch.no_grad():
        fused, ref, _ = both(model, run)
    assert calls and all(c == (4, 4, False) for c in calls)
    assert (fused[1] - ref[1]).abs().max() < ATOL and (fused[0, 3:] - ref[0, 3:]).abs().max() < ATOL
