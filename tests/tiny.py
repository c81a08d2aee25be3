"""Tiny randomly initialised HookedTransformers for unit tests (no tokenizer, no weights).

Exactness tests (two routes that must agree) build them in float64 (``dtype=torch.float64``):
float32 results differ in the last bits with batch shape, BLAS blocking and thread count.
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig


def tiny_model(
    n_layers: int = 2,
    d_model: int = 32,
    n_heads: int = 4,
    d_head: int = 8,
    d_mlp: int = 64,
    d_vocab: int = 50,
    n_ctx: int = 64,
    n_key_value_heads: int | None = None,
    rotary: bool = True,
    gated: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> HookedTransformer:
    """A small llama-like model (RMSNorm, rotary, gated SiLU MLP; GQA if asked)."""
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=d_mlp,
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        n_key_value_heads=n_key_value_heads,
        act_fn="silu" if gated else "gelu",
        gated_mlp=gated,
        normalization_type="RMS",
        final_rms=True,
        positional_embedding_type="rotary" if rotary else "standard",
        rotary_dim=d_head if rotary else None,
        rotary_adjacent_pairs=False,
        default_prepend_bos=False,
        seed=seed,
        device="cpu",
        dtype=dtype,
    )
    model = HookedTransformer(cfg, move_to_device=False)
    torch.manual_seed(seed)
    with torch.no_grad():  # larger-than-default init so attention is far from uniform
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.5 / p.shape[-1] ** 0.5 * 4)
    model.eval()
    return model
