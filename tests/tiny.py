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
    rotary_dim: int | None = None,
    adjacent_pairs: bool = False,
    gated: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> HookedTransformer:
    """A small llama-like model (RMSNorm, rotary, gated SiLU MLP; GQA if asked). RoPE rotates
    the first ``rotary_dim`` dims of each head (all by default), in halves or, with
    ``adjacent_pairs``, in adjacent pairs (GPT-J style)."""
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
        rotary_dim=(rotary_dim or d_head) if rotary else None,
        rotary_adjacent_pairs=adjacent_pairs,
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


def copy_model(d_vocab: int = 20, n_ctx: int = 32, offset: int = 10, dtype: torch.dtype = torch.float32,
               n_layers: int = 1, n_heads: int = 2) -> HookedTransformer:
    """A 1-layer, 2-head attention-only model wired by hand to copy (more layers or heads
    than that get zero weights: only head 0 of layer 0 is wired).

    Residual = [token one-hot (d_vocab) | position one-hot (n_ctx)]. Head 0's query at
    position p matches only the key at p − ``offset`` (score 30 there, 0 elsewhere) and
    writes 10 × that key's token one-hot; head 1 has zero weights (uniform attention, no
    output). The unembedding reads the token part, so the model predicts the token
    ``offset`` positions back: greedy decoding after a prompt of length P re-emits
    prompt[P − 1 − offset], prompt[P − offset], … — head 0 is a perfect copying head.
    """
    d_model = d_vocab + n_ctx
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=n_ctx, d_vocab=d_vocab, n_ctx=n_ctx, attn_only=True,
        normalization_type=None, positional_embedding_type="standard", default_prepend_bos=False,
        device="cpu", dtype=dtype, act_fn="relu", d_mlp=4,
    )
    model = HookedTransformer(cfg, move_to_device=False)
    a = (30.0 * n_ctx ** 0.5) ** 0.5  # q·k / sqrt(d_head) = 30 on the matching key
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E[torch.arange(d_vocab), torch.arange(d_vocab)] = 1.0
        model.pos_embed.W_pos[torch.arange(n_ctx), d_vocab + torch.arange(n_ctx)] = 1.0
        attn = model.blocks[0].attn
        for p in range(n_ctx):
            attn.W_Q[0, d_vocab + p, p] = a
            if p + offset < n_ctx:
                attn.W_K[0, d_vocab + p, p + offset] = a
        attn.W_V[0, torch.arange(d_vocab), torch.arange(d_vocab)] = 1.0
        attn.W_O[0, torch.arange(d_vocab), torch.arange(d_vocab)] = 10.0
        model.unembed.W_U[torch.arange(d_vocab), torch.arange(d_vocab)] = 1.0
    model.eval()
    return model
