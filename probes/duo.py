"""DuoAttention's gated attention on a hooked model (Xiao et al. 2024; docs/retrieval.md#duoattention).

Every KV head (layer l, KV head k) has a gate α ∈ [0, 1]; its query heads output

    α · (full causal attention) + (1 − α) · (streaming attention: the first ``n_sink`` keys
                                             and the ``window`` most recent ones)

GQA: query head h reads KV head h // (n_heads / n_kv_heads) (TransformerLens'
``repeat_interleave``), so a gate is broadcast to its query-head group.

The streaming mask follows the reference's ``generate_streaming_mask``: query t sees key
j ≤ t when j < n_sink or t − j < window (the window counts the query itself). That is
:func:`probes.razor.dropped_mask` with window − 1 (RazorAttention counts the window before
the query), checked in the tests.

Two ways to build the full branch (``full_branch``):

* ``"shared"`` — both branches from the same q/k/v (the paper's formula, one model): a hook
  on ``hook_attn_scores`` computes the streaming pattern (a masked softmax of the same
  scores) and a hook on ``hook_pattern`` mixes α·full + (1−α)·streaming. Because z is
  linear in the pattern this is α·z_full + (1−α)·z_streaming.
* ``"reference"`` — as mit-han-lab/duo-attention trains (``llama_duo_attention_forward_two_way``):
  the full branch is the *unmodified* model's attention output on the same text (computed
  once, no gradient, captured at ``hook_z``); the gated copy's own attention is streaming
  (scores masked at ``hook_attn_scores``) and ``hook_z`` returns α·z_ref + (1−α)·z_stream.

Both give the unmodified model at α = 1 and the pure sinks + window model at α = 0.
The hooks are data for :func:`probes.interventions.applied` (never attached elsewhere);
:func:`final_hidden` runs the blocks one by one, optionally under activation checkpointing
so that back-propagation keeps one layer's T×T attention at a time, not all of them.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from mechscope.probes.errors import InputError
from mechscope.probes.hooknames import name as hook_name
from mechscope.probes.razor import kv_group, n_kv_heads

FullBranch = Literal["shared", "reference"]
FULL_BRANCHES = ("shared", "reference")


def streaming_mask(n_q: int, n_k: int, n_sink: int, window: int, device=None) -> torch.Tensor:
    """[n_q, n_k] bool: True where the query at absolute position t = n_k − n_q + i may see
    key j under sinks + window (j ≤ t and (j < n_sink or t − j < window))."""
    t = torch.arange(n_k - n_q, n_k, device=device)[:, None]
    j = torch.arange(n_k, device=device)[None, :]
    return (j <= t) & ((j < n_sink) | (t - j < window))


def check_gates(model, gates: torch.Tensor) -> None:
    want = (model.cfg.n_layers, n_kv_heads(model))
    if tuple(gates.shape) != want:
        raise InputError(f"Gates have shape {tuple(gates.shape)}; this model needs [layers, KV heads] = {list(want)}.")


def check_window(n_sink: int, window: int) -> None:
    for label, v, low in (("n_sink", n_sink, 0), ("window", window, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise InputError(f"{label} must be an integer >= {low}, not {v!r}.")


def query_gates(model, gates: torch.Tensor, layer: int) -> torch.Tensor:
    """[n_heads] gate of each query head of ``layer`` (its KV head's gate), clamped to [0, 1]."""
    return gates[layer].clamp(0.0, 1.0).repeat_interleave(kv_group(model))


def gate_hooks(model, gates: torch.Tensor, n_sink: int, window: int, full_branch: FullBranch = "shared",
               reference_z: list[torch.Tensor] | None = None) -> list:
    """(hook name, fn) pairs making every layer's attention DuoAttention-gated by ``gates``
    ([layers, KV heads], may require grad). ``reference_z[l]`` ([B, T, n_heads, d_head], the
    unmodified model's ``hook_z``) is needed for ``full_branch="reference"``."""
    check_gates(model, gates)
    check_window(n_sink, window)
    if full_branch not in FULL_BRANCHES:
        raise InputError(f"full_branch must be one of {', '.join(FULL_BRANCHES)}, not {full_branch!r}.")
    if full_branch == "reference" and (reference_z is None or len(reference_z) != model.cfg.n_layers):
        raise InputError("full_branch='reference' needs the unmodified model's hook_z of every layer.")
    if getattr(model.cfg, "positional_embedding_type", "") == "alibi":
        raise InputError("DuoAttention here supports rotary/absolute positions, not ALiBi.")
    hooks = []
    for layer in range(model.cfg.n_layers):
        if full_branch == "shared":
            stash: dict[str, torch.Tensor] = {}

            def scores_hook(scores, hook=None, stash=stash):
                keep = streaming_mask(scores.shape[-2], scores.shape[-1], n_sink, window, scores.device)
                stash["p"] = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
                return scores

            def pattern_hook(pattern, hook=None, stash=stash, layer=layer):
                a = query_gates(model, gates, layer).to(pattern.dtype)[None, :, None, None]
                return a * pattern + (1 - a) * stash.pop("p").to(pattern.dtype)

            hooks += [(hook_name("attn_scores", layer), scores_hook), (hook_name("pattern", layer), pattern_hook)]
        else:
            def mask_hook(scores, hook=None):
                keep = streaming_mask(scores.shape[-2], scores.shape[-1], n_sink, window, scores.device)
                return scores.masked_fill(~keep, float("-inf"))

            def z_hook(z, hook=None, layer=layer):
                a = query_gates(model, gates, layer).to(z.dtype)[None, None, :, None]
                return a * reference_z[layer].to(z.dtype) + (1 - a) * z

            hooks += [(hook_name("attn_scores", layer), mask_hook), (hook_name("z", layer), z_hook)]
    return hooks


def z_capture_hooks(model, into: list) -> list:
    """Hooks appending every layer's ``hook_z`` (detached) to ``into``, in layer order."""
    def grab(z, hook=None):
        into.append(z.detach())

    return [(hook_name("z", layer), grab) for layer in range(model.cfg.n_layers)]


def final_hidden(model, tokens: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
    """The final hidden states [B, T, d_model] (after the final norm, before the
    unembedding — what the reference's ``model.model`` returns), running the blocks one by
    one. ``checkpoint=True`` recomputes each block in the backward pass (same values, one
    layer's activations held at a time; call backward while the hooks are still attached,
    since the recomputation runs them again). Hooks attached by the caller fire as usual."""
    tokens = torch.as_tensor(tokens, dtype=torch.long, device=model.cfg.device)
    if tokens.ndim == 1:
        tokens = tokens[None]
    mask = torch.ones_like(tokens)
    resid = model(tokens, attention_mask=mask, stop_at_layer=0)
    for block in model.blocks:
        if checkpoint and torch.is_grad_enabled():
            resid = _checkpoint(block, resid, None, None, mask, use_reentrant=False)
        else:
            resid = block(resid, attention_mask=mask)
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    return resid
