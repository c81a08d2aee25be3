"""The forward pass decoding needs: the next-token logits of each row's last position.

TransformerLens' forward unembeds every position ([batch, T, d_vocab]); a prompt of T tokens
costs T × d_model × d_vocab multiply-adds and T × d_vocab floats of logits (8k tokens × 49k
vocabulary × 4 bytes = 1.6 GB per row) that a decoder throws away. :func:`last_logits` runs
the blocks as TransformerLens does (every hook inside them fires), then the final norm,
unembedding and output soft-cap on the last position only — what Hugging Face's generate does
(``logits_to_keep=1``). When a hook reads the final norm or the unembedding, the plain forward
runs instead, so such a hook still sees every position.
"""

from __future__ import annotations

import torch
from transformer_lens.utilities.activation_functions import apply_softcap

from mechscope.probes.module_state import any_hooked


def reads_final_positions(model) -> bool:
    """Whether a hook on ``ln_final`` or ``unembed`` (or a global module hook) would observe
    the full-sequence output of the last norm or the unembedding."""
    final = [model.unembed, *model.unembed.modules()]
    if getattr(model, "ln_final", None) is not None:
        final += list(model.ln_final.modules())
    return any_hooked(final)


def last_logits(model, tokens: torch.Tensor, **forward_kwargs) -> torch.Tensor:
    """``model(tokens, **forward_kwargs)[:, -1]`` ([batch, d_vocab]) without unembedding the
    other positions (equal to float rounding of the unembedding matmul)."""
    if reads_final_positions(model):
        return model(tokens, **forward_kwargs)[:, -1]
    resid = model(tokens, stop_at_layer=model.cfg.n_layers, **forward_kwargs)[:, -1:]
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    logits = apply_softcap(model.unembed(resid), model.cfg.output_logits_soft_cap)
    return logits[:, -1]
