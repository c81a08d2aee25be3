"""probes.forward.last_logits: the last position's logits without unembedding the others —
equal to TransformerLens' full forward (float64 tiny models, with the output soft-cap, with a
KV cache), and the full forward when a hook reads the final norm or the unembedding."""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mechscope.probes.forward import last_logits, reads_final_positions
from mechscope.probes.kv_policies import new_cache
from tests.tiny import tiny_model

# float64: the two ways differ in the rounding of one matmul (~1e-15 relative)
ATOL = 1e-10


def tokens(batch=2, n=12, vocab=50, seed=0):
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def softcapped(cap=3.0):
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=64, act_fn="gelu",
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8,
        output_logits_soft_cap=cap, default_prepend_bos=False, device="cpu", dtype=torch.float64,
    )
    model = HookedTransformer(cfg, move_to_device=False)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1.0 / p.shape[-1] ** 0.5) if p.ndim >= 2 else p.normal_(1.0, 0.3)
    return model.eval()


def test_equals_the_full_forward_at_the_last_position():
    model = tiny_model(dtype=torch.float64)
    x = tokens()
    with torch.no_grad():
        got, ref = last_logits(model, x), model(x)[:, -1]
    assert got.shape == (2, model.cfg.d_vocab)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=ATOL)


def test_output_soft_cap_is_applied():
    model = softcapped(cap=3.0)
    x = tokens()
    with torch.no_grad():
        got, ref = last_logits(model, x), model(x)[:, -1]
    assert got.abs().max() < 3.0  # capped: |3·tanh(z/3)| < 3
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=ATOL)


def test_with_a_kv_cache_the_prefix_and_the_next_piece_match_the_full_forward():
    model = tiny_model(dtype=torch.float64)
    x = tokens(n=15)
    with torch.no_grad():
        ref = model(x)
        cache = new_cache(model, 2)
        first = last_logits(model, x[:, :10], past_kv_cache=cache, attention_mask=torch.ones_like(x[:, :10]))
        second = last_logits(model, x[:, 10:], past_kv_cache=cache, attention_mask=torch.ones_like(x[:, 10:]))
    torch.testing.assert_close(first, ref[:, 9], rtol=1e-9, atol=ATOL)
    torch.testing.assert_close(second, ref[:, -1], rtol=1e-9, atol=ATOL)


def test_a_hook_on_the_final_norm_sees_every_position():
    model = tiny_model(dtype=torch.float64)
    x = tokens(n=9)
    seen = []
    assert not reads_final_positions(model)
    with model.hooks(fwd_hooks=[("ln_final.hook_normalized", lambda t, hook: seen.append(t.shape))]):
        assert reads_final_positions(model)
        with torch.no_grad():
            got = last_logits(model, x)
    assert seen == [torch.Size([2, 9, model.cfg.d_model])]
    with torch.no_grad():
        torch.testing.assert_close(got, model(x)[:, -1], rtol=1e-9, atol=ATOL)


def test_a_hook_inside_the_blocks_still_fires_once_per_pass():
    model = tiny_model(dtype=torch.float64)
    x = tokens(n=7)
    seen = []
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", lambda t, hook: seen.append(t.shape))]):
        with torch.no_grad():
            last_logits(model, x)
    assert seen == [torch.Size([2, 7, model.cfg.d_model])]
