"""Residual stream → (final norm) → logits: the one readout every analysis uses.

* ``final_norm=True`` — the logit lens proper (nostalgebraist 2020): the model's own final
  norm (``ln_final``, with its γ), then the unembedding W_U (+ b_U).
* ``final_norm=False`` — LLM-Microscope's variant (Razzhigaev et al. 2025): the LM head
  applied to the raw residual, no norm and no γ.

Models are loaded unprocessed (``probes.models``), so γ lives in ``ln_final`` and "raw"
really excludes it.
"""

from __future__ import annotations

import torch


def unembed(model, x: torch.Tensor) -> torch.Tensor:
    """x [..., d_model] @ W_U (+ b_U) → [..., d_vocab]."""
    out = x @ model.W_U.to(x.dtype)
    b = getattr(model, "b_U", None)
    if b is not None:
        out = out + b.to(out.dtype)
    return out


def final_norm(model, resid: torch.Tensor) -> torch.Tensor:
    """The model's final normalisation (identity for models without one)."""
    ln = getattr(model, "ln_final", None)
    return resid if ln is None else ln(resid)


def logits_from_resid(model, resid: torch.Tensor, final_norm: bool = True) -> torch.Tensor:
    """Logits for residual states ``resid`` [..., d_model] (float32 or the model's dtype)."""
    x = _final_norm(model, resid) if final_norm else resid
    return unembed(model, x)


_final_norm = final_norm


def logprobs_from_resid(model, resid: torch.Tensor, final_norm: bool = True) -> torch.Tensor:
    return logits_from_resid(model, resid, final_norm=final_norm).float().log_softmax(-1)
