"""probes.fused_block: the lean block forward gives TransformerLens' block outputs (float32,
exactly), steps aside for any hook in the block, re-checks zero biases after an in-place edit,
and leaves other block kinds alone."""

from __future__ import annotations

import torch

from mechscope.probes import fused_attention as fa
from mechscope.probes import fused_block
from mechscope.probes.kv_policies import new_cache
from tests.tiny import tiny_model


def tokens(batch=2, n=10, vocab=50, seed=0):
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def reference(model, fn):
    with fa.materialised(model):  # the lean block is switched with the fused attention
        return fn()


def test_block_outputs_equal_transformerlens_exactly_in_float32():
    """Against TransformerLens' own block forward around the same (fused) attention."""
    model = tiny_model(n_layers=3, n_key_value_heads=2, dtype=torch.float32)
    fa.install(model, True)
    for i, block in enumerate(model.blocks):
        resid = torch.randn(2, 10, model.cfg.d_model, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            lean = block(resid)
            ref = type(block).forward(block, resid)
        assert "forward" in block.__dict__ and torch.equal(lean, ref), i


def test_biases_that_are_not_zero_are_added_and_edits_are_seen():
    model = tiny_model(n_layers=2, dtype=torch.float64)
    fa.install(model, True)
    x = tokens()
    with torch.no_grad():
        zero = model(x)
        for block in model.blocks:
            block.mlp.b_in.add_(0.5)  # in place: the zero check must be redone
            block.mlp.b_out.normal_(0, 0.3)
            block.attn.b_Q.normal_(0, 0.3)
            block.attn.b_O.normal_(0, 0.3)
        lean = model(x)
        ref = reference(model, lambda: model(x))
    assert (lean - zero).abs().max() > 1e-3  # the biases changed the output...
    torch.testing.assert_close(lean, ref, rtol=1e-12, atol=1e-12)  # ...exactly as TransformerLens adds them


def test_with_a_kv_cache_decoding_matches():
    model = tiny_model(n_layers=2, n_key_value_heads=2, dtype=torch.float64)
    fa.install(model, True)
    x = tokens(n=12)

    def run():
        cache = new_cache(model, 2)
        with torch.no_grad():
            first = model(x[:, :8], past_kv_cache=cache, attention_mask=torch.ones_like(x[:, :8]))
            rest = [model(x[:, t : t + 1], past_kv_cache=cache, attention_mask=torch.ones_like(x[:, :1]))
                    for t in range(8, 12)]
        return torch.cat([first, *rest], 1)

    torch.testing.assert_close(run(), reference(model, run), rtol=1e-12, atol=1e-12)


def test_any_hook_in_the_block_runs_transformerlens_forward():
    model = tiny_model(n_layers=2, dtype=torch.float64)
    fa.install(model, True)
    x = tokens()
    with torch.no_grad():
        ref = model(x)
    for point in ("blocks.0.hook_resid_pre", "blocks.0.ln2.hook_scale", "blocks.0.mlp.hook_post",
                  "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post", "blocks.1.ln1.hook_normalized"):
        seen = []
        with model.hooks(fwd_hooks=[(point, lambda t, hook, seen=seen: seen.append(t.shape))]):
            with torch.no_grad():
                out = model(x)
        assert seen, point  # the hook fired
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_an_edit_made_by_a_hook_in_the_block_takes_effect():
    model = tiny_model(n_layers=2, dtype=torch.float64)
    fa.install(model, True)
    x = tokens()
    with torch.no_grad():
        ref = model(x)
        with model.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", lambda t, hook: t * 0)]):
            edited = model(x)
    assert (edited - ref).abs().max() > 1e-3


def test_other_block_kinds_keep_transformerlens_forward():
    model = tiny_model(n_layers=1, gated=False, dtype=torch.float64)
    fa.install(model, True)
    assert fused_block.unsupported_reason(model.blocks[0]) == "an MLP other than the gated SiLU one"
    assert "forward" not in model.blocks[0].__dict__
    llama = tiny_model(n_layers=1)
    fa.install(llama, True)
    assert fused_block.unsupported_reason(llama.blocks[0]) is None and "forward" in llama.blocks[0].__dict__
    fa.uninstall(llama)
    assert "forward" not in llama.blocks[0].__dict__


def test_flags_switched_after_loading_run_transformerlens_forward():
    """set_use_split_qkv_input / set_use_hook_mlp_in after install (path patching does this):
    the block's own forward runs, with its extra hook points."""
    model = tiny_model(n_layers=2, dtype=torch.float64)
    fa.install(model, True)
    x = tokens()
    with torch.no_grad():
        ref = model(x)
    for setter in (model.set_use_split_qkv_input, model.set_use_hook_mlp_in):
        setter(True)
        seen = []
        point = "blocks.1.hook_q_input" if setter == model.set_use_split_qkv_input else "blocks.1.hook_mlp_in"
        try:
            with model.hooks(fwd_hooks=[(point, lambda t, hook: seen.append(1))]), torch.no_grad():
                out = model(x)
        finally:
            setter(False)
        assert seen, point
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    with torch.no_grad():
        model.set_use_split_qkv_input(True)
        try:
            out = model(x)  # no hook at all: still TransformerLens' per-head inputs, no error
        finally:
            model.set_use_split_qkv_input(False)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)


def test_a_model_cast_to_bfloat16_after_install_keeps_transformerlens_norms():
    """RMSNorm in TransformerLens normalises in float32 for low-precision inputs; the lean
    block steps aside for them, so a bfloat16 model gives TransformerLens' exact outputs."""
    model = tiny_model(n_layers=2, dtype=torch.float32)
    fa.install(model, True)
    model = model.to(torch.bfloat16)
    block = model.blocks[0]
    resid = torch.randn(2, 6, model.cfg.d_model, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(block(resid), type(block).forward(block, resid))
