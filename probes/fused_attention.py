"""Fused attention: TransformerLens attention through ``scaled_dot_product_attention``
whenever nothing reads the attention pattern.

TransformerLens' attention forms the [batch, head, query, key] scores and pattern in every
layer so that ``hook_attn_scores`` and ``hook_pattern`` can see them, whether or not a hook
is attached. :func:`install` gives every attention module of a model a forward that decides,
**per layer and per call**, between

* the **fused path** — ``torch.nn.functional.scaled_dot_product_attention`` (causal,
  grouped-query heads — ``enable_gqa`` on the CPU, repeated KV heads elsewhere (see
  :data:`NATIVE_GQA_DEVICES`) —, the KV-cache offset, the cache's padding mask and
  local windows as a boolean mask), which never holds the [heads × T × T] tensors; and
* the **materialised path** — TransformerLens' own ``forward``, unchanged.

The fused path runs every other hook point where TransformerLens has it, in the same order
and with the same values: ``hook_q``/``hook_k``/``hook_v`` (then QK-norm, as in
TransformerLens' ``calculate_qkv_matrices``), ``hook_rot_q``/
``hook_rot_k`` (keys of the whole cache), ``hook_z``, ``hook_result`` (with
``use_attn_result``), and the block's ``hook_attn_out``/residual/MLP hooks outside. Only
``hook_attn_scores`` and ``hook_pattern`` do not fire — which is why the path is taken only
when neither has a hook.

**When the materialised path is used** (checked on every call):

* a forward or backward hook (TransformerLens ``add_hook``/``hooks()``/``run_with_cache``,
  or a raw PyTorch hook) on that layer's ``hook_attn_scores`` or ``hook_pattern``, or any
  global ``nn.Module`` hook — sink, retrieval, ACT, RazorAttention, DuoAttention and
  uniform head-mask hooks all sit there, so they always see the real pattern;
* an ``additive_attention_mask`` or ``position_bias`` argument;
* :func:`materialised` / :func:`set_enabled` switched it off, or the environment variable
  ``MECHSCOPE_FUSED_ATTENTION=0`` was set when the model was installed.

and, for the layer's lifetime, configurations SDPA cannot express exactly
(:func:`unsupported_reason` names which): attention-score soft-capping (Gemma 2's
``attn_scores_soft_cap``: tanh before the softmax), ALiBi and T5 relative position biases,
learned attention-sink logits (GPT-OSS), non-causal attention, Qwen's log-n query scaling
and dynamic NTK rotary, OLMo's whole-vector QK-norm and Q/K/V clipping, 4-bit weights, and
attention classes other than TransformerLens' ``Attention``/``GroupedQueryAttention``.
Local (sliding-window) layers — GPT-Neo, Gemma 3's 5-local : 1-global pattern — are fused
with an explicit boolean mask (key j visible from query i iff i − window < j ≤ i), exactly
TransformerLens' rule; the mask costs one byte per (query, key) pair and is only built when
the keys outnumber the window.

**Equality.** Both paths compute softmax(q·kᵀ / attn_scale + mask)·v; they differ only in
float rounding (SDPA scales before the product and sums in another order): ~1e-7 relative
in float32, ~1e-15 in float64 (tests compare both paths on tiny MHA, GQA, partial-rotary and
local-window models, with and without a padded KV cache, and greedy tokens on SmolLM2).
Query rows that see no key at all (left padding) give z = 0, as TransformerLens' NaN → 0.

**Rotated-key reuse.** TransformerLens caches keys *before* rotary and rotates the whole
cache again on every call (so a KV policy that drops entries re-assigns positions by place).
On an unpadded cached call the fused path keeps the rotated cache on the cache entry and
rotates only the new keys — element-wise the same numbers — as long as the entry's
``past_keys`` is the very tensor it rotated last time, unmodified (a policy that trims or
edits the cache replaces or writes it, and the rotation is redone in full). ``hook_rot_k``
still receives the rotated keys of the whole cache. The copy costs one more key cache.

**Fewer small operations.** On the fused path the q/k/v and output projections and the
rotation are written out directly (the same operations on the same operands as
TransformerLens' ``simple_attn_linear``/``apply_rotary``, so the same numbers — bitwise in
the tests), a hook point with no hook is not called (its forward is the identity), and the
block's ``ln1``, which TransformerLens applies three times to the same residual (as query,
key and value input), is computed once when no hook sits inside it (with a hook there,
TransformerLens' three calls and three hook firings stay).

**Out of memory.** A ``torch.OutOfMemoryError`` inside attention becomes one
:class:`AttentionMemoryError` line naming the layer, the sizes and what to lower.
"""

from __future__ import annotations

import os
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F

from transformer_lens.components import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre
from transformer_lens.hook_points import HookPoint

from mechscope.probes import fused_block
from mechscope.probes.module_state import any_hooked, nonzero_bias
from mechscope.probes.errors import MechscopeError

_NORMS = (LayerNorm, LayerNormPre, RMSNorm, RMSNormPre)

ENV = "MECHSCOPE_FUSED_ATTENTION"
#: hook points whose hooks force the materialised path
PATTERN_POINTS = ("hook_attn_scores", "hook_pattern")

#: devices whose SDPA kernels take grouped KV heads (``enable_gqa``) in every case used here.
#: Elsewhere the KV heads are repeated first (O(T) extra memory): on CUDA the
#: memory-efficient kernel — the one for float32 and for boolean masks — takes grouped heads
#: only in some PyTorch releases, and where it does not SDPA falls back to its math kernel,
#: which forms the whole [heads × T × T] matrix.
NATIVE_GQA_DEVICES = ("cpu",)

_OLMO = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


class AttentionMemoryError(MechscopeError):
    """The device ran out of memory inside an attention layer."""


@dataclass
class FusedState:
    """Per-model switch and counters, shared by the model's attention modules."""

    enabled: bool = True
    calls: dict = field(default_factory=lambda: {"fused": 0, "materialised": 0})
    # the last attention mask seen and whether it was all ones (one check per forward pass:
    # every layer of a pass receives the same mask tensor)
    _mask: torch.Tensor | None = None
    _mask_version: int = -1
    _mask_plain: bool = False

    def plain_mask(self, mask: torch.Tensor | None) -> bool:
        """True when ``mask`` is None or has no padding (all ones)."""
        if mask is None:
            return True
        version = _version(mask)
        if mask is self._mask and version is not None and version == self._mask_version:
            return self._mask_plain
        plain = bool(mask.all())
        self._mask, self._mask_version, self._mask_plain = mask, (version if version is not None else -1), plain
        return plain


def _version(t: torch.Tensor) -> int | None:
    """The tensor's in-place version counter (None for inference tensors, which have none)."""
    if t.is_inference():
        return None
    return t._version


# ---------------------------------------------------------------------------------------
# Installing


def env_enabled() -> bool:
    """False when ``MECHSCOPE_FUSED_ATTENTION`` is set to 0/false/off/no."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def _attention_modules(model) -> list:
    return [block.attn for block in getattr(model, "blocks", [])]


def unsupported_reason(attn) -> str | None:
    """Why this attention module can never take the fused path (None: it can)."""
    from transformer_lens.components import Attention, GroupedQueryAttention
    from transformer_lens.utilities.activation_functions import softcap_enabled

    cfg = attn.cfg
    if type(attn) not in (Attention, GroupedQueryAttention):
        return f"{type(attn).__name__} is not TransformerLens' Attention/GroupedQueryAttention"
    if cfg.load_in_4bit:
        return "4-bit weights"
    if softcap_enabled(cfg.attn_scores_soft_cap):
        return f"attention-score soft-capping (cap {cfg.attn_scores_soft_cap:g}: tanh before the softmax)"
    if cfg.positional_embedding_type in ("alibi", "relative_positional_bias"):
        return f"{cfg.positional_embedding_type} position biases"
    if cfg.use_attention_sinks:
        return "learned attention-sink logits"
    if (attn._attention_dir_override or cfg.attention_dir) != "causal":
        return "non-causal attention"
    if cfg.use_logn_attn:
        return "log-n query scaling"
    if cfg.use_dynamic_ntk_rope:
        return "dynamic NTK rotary"
    if cfg.original_architecture in _OLMO:
        return "whole-vector QK-norm (OLMo)"
    if cfg.clip_qkv is not None:
        return "Q/K/V clipping"
    if attn.attn_type == "local" and not isinstance(cfg.window_size, int):
        return "local attention without an integer window"
    return None


def install(model, enabled: bool | None = None) -> FusedState:
    """Give every attention module of ``model`` the per-call fused/materialised forward.
    ``enabled`` defaults to the ``MECHSCOPE_FUSED_ATTENTION`` switch. Idempotent; returns the
    model's :class:`FusedState`."""
    state = getattr(model, "_mechscope_fused", None)
    if state is None:
        state = FusedState()
        model._mechscope_fused = state
    state.enabled = env_enabled() if enabled is None else bool(enabled)
    for block in getattr(model, "blocks", []):
        attn = block.attn
        attn._mechscope_fused = state
        attn._mechscope_unsupported = unsupported_reason(attn)
        attn.forward = types.MethodType(_forward, attn)
        ln = getattr(block, "ln1", None)
        shared_input = not (attn.cfg.use_split_qkv_input or attn.cfg.use_attn_in)
        if isinstance(ln, _NORMS) and attn._mechscope_unsupported is None and shared_input:
            attn.__dict__["_mechscope_ln1"] = ln  # a plain reference, not a registered submodule
            ln._mechscope_fused = state
            ln._mechscope_points = [m for m in ln.modules() if isinstance(m, HookPoint)]
            ln.forward = types.MethodType(_norm_forward, ln)
    fused_block.install(model, state)
    return state


def uninstall(model) -> None:
    """Restore TransformerLens' own forward on every attention module (and ln1)."""
    for block in getattr(model, "blocks", []):
        for module, names in ((block.attn, ("forward", "_mechscope_fused", "_mechscope_unsupported", "_mechscope_ln1")),
                              (getattr(block, "ln1", None), ("forward", "_mechscope_fused", "_mechscope_points",
                                                             "_mechscope_memo"))):
            for name in names:
                if module is not None:
                    module.__dict__.pop(name, None)
    fused_block.uninstall(model)
    model.__dict__.pop("_mechscope_fused", None)


def state_of(model) -> FusedState | None:
    """The model's :class:`FusedState` (None when :func:`install` was never called)."""
    return getattr(model, "_mechscope_fused", None)


def set_enabled(model, enabled: bool) -> None:
    """Switch the fused path on or off for ``model`` (installing it if needed)."""
    state = state_of(model)
    if state is None:
        install(model, enabled)
    else:
        state.enabled = bool(enabled)


@contextmanager
def materialised(model) -> Iterator[None]:
    """Run the block on TransformerLens' materialised attention (the reference path)."""
    state = state_of(model)
    if state is None:
        yield
        return
    before = state.enabled
    state.enabled = False
    try:
        yield
    finally:
        state.enabled = before


def fallback_reasons(model) -> dict[int, str]:
    """{layer: why} for the layers that can never be fused (configuration, not hooks)."""
    out = {}
    for layer, attn in enumerate(_attention_modules(model)):
        reason = getattr(attn, "_mechscope_unsupported", None) if "forward" in attn.__dict__ else "not installed"
        if reason is not None:
            out[layer] = reason
    return out


def reads_pattern(attn) -> bool:
    """Whether a hook on this layer's ``hook_attn_scores``/``hook_pattern`` (or a global
    module hook) would observe or edit the materialised scores or pattern."""
    return any_hooked(getattr(attn, point) for point in PATTERN_POINTS)


def will_fuse(attn) -> bool:
    """Whether the next plain call of this attention module takes the fused path."""
    state = getattr(attn, "_mechscope_fused", None)
    return (
        state is not None and state.enabled and "forward" in attn.__dict__
        and attn._mechscope_unsupported is None and not reads_pattern(attn)
    )


# ---------------------------------------------------------------------------------------
# The forward


def _forward(
    self,
    query_input,
    key_input,
    value_input,
    past_kv_cache_entry=None,
    additive_attention_mask=None,
    attention_mask=None,
    position_bias=None,
):
    state: FusedState = self._mechscope_fused
    ln = self.__dict__.get("_mechscope_ln1")
    if ln is not None:
        ln.__dict__.pop("_mechscope_memo", None)  # its q/k/v inputs are made: drop the shared copy
    fused = additive_attention_mask is None and position_bias is None and will_fuse(self)
    state.calls["fused" if fused else "materialised"] += 1
    cached = past_kv_cache_entry.past_keys.shape[1] if past_kv_cache_entry is not None else 0
    try:
        if not fused:
            return type(self).forward(
                self, query_input, key_input, value_input, past_kv_cache_entry=past_kv_cache_entry,
                additive_attention_mask=additive_attention_mask, attention_mask=attention_mask,
                position_bias=position_bias,
            )
        return _fused_forward(self, state, query_input, key_input, value_input, past_kv_cache_entry, attention_mask)
    except torch.OutOfMemoryError:
        raise AttentionMemoryError(_oom_message(self, query_input, cached, fused)) from None


def _oom_message(attn, query_input, cached: int, fused: bool) -> str:
    cfg = attn.cfg
    batch, queries = query_input.shape[0], query_input.shape[1]
    keys = queries + cached
    where = f"layer {attn.layer_id}'s attention" if attn.layer_id is not None else "attention"
    if fused:
        need = "the keys and values"
    else:
        gib = batch * cfg.n_heads * queries * keys * torch.finfo(cfg.dtype).bits / 8 / 2**30
        need = (f"the materialised [batch × {cfg.n_heads} heads × {queries} × {keys}] pattern "
                f"(~{gib:.2f} GiB each copy)")
    return (
        f"Out of device memory in {where} ({batch} row(s), {queries} queries, {keys} keys; it holds {need}): "
        "lower the batch size or the prompt length"
        + ("" if fused else ", or detach hooks on hook_pattern/hook_attn_scores so the fused path is used")
        + "."
    )


def _norm_forward(self, x):
    """A block's ``ln1``: TransformerLens normalises the attention input three times (as the
    query, key and value input), usually the same tensor. With the fused path on and no hook
    inside the norm, a repeat call on the very same, unmodified tensor returns the first
    result (the attention forward drops it); otherwise TransformerLens' own forward."""
    state = self._mechscope_fused
    version = _version(x) if state.enabled else None
    if version is None or any_hooked(self._mechscope_points):
        return type(self).forward(self, x)
    memo = self.__dict__.get("_mechscope_memo")
    if memo is not None and memo[0] is x and memo[1] == version:
        return memo[2]
    out = type(self).forward(self, x)
    self._mechscope_memo = (x, version, out)
    return out


def _hook(point, x: torch.Tensor) -> torch.Tensor:
    """``point(x)`` — skipped when the hook point has no hook at all (its forward is the
    identity, so the result is the same tensor)."""
    if any_hooked((point,)):
        return point(x)
    return x


def _fused_forward(self, state: FusedState, query_input, key_input, value_input, entry, attention_mask):
    cfg = self.cfg
    q, k, v = _qkv(self, query_input, key_input, value_input)
    k_new, past = k, None
    if entry is not None:
        past = entry.past_keys
        offset = past.size(1)
        k, v = entry.append(k, v)
    else:
        offset = 0
    plain = state.plain_mask(attention_mask)
    if cfg.positional_embedding_type == "rotary":
        q = _hook(self.hook_rot_q, _rotate(self, q, offset) if plain else self.apply_rotary(q, offset, attention_mask))
        k = _hook(self.hook_rot_k, _rotated_keys(self, entry, past, k, k_new, offset, attention_mask, plain))
    z = _hook(self.hook_z, _sdpa(self, q, k, v, offset, attention_mask, plain))
    return _project_out(self, z)


def _qkv(self, query_input, key_input, value_input):
    """TransformerLens' ``calculate_qkv_matrices`` (``simple_attn_linear`` per projection, the
    hooks, then QK-norm), without its per-call einops for the common case."""
    cfg = self.cfg
    if cfg.use_split_qkv_input or cfg.use_attn_in:
        return self.calculate_qkv_matrices(query_input, key_input, value_input)
    grouped = hasattr(self, "_W_K") and not cfg.ungroup_grouped_query_attention
    W_K, b_K = (self._W_K, self._b_K) if grouped else (self.W_K, self.b_K)
    W_V, b_V = (self._W_V, self._b_V) if grouped else (self.W_V, self.b_V)
    q = _hook(self.hook_q, _linear(query_input, self.W_Q, self.b_Q))
    k = _hook(self.hook_k, _linear(key_input, W_K, b_K))
    v = _hook(self.hook_v, _linear(value_input, W_V, b_V))
    if cfg.use_qk_norm:
        q = self._apply_qk_norm(q, self.q_norm)
        k = self._apply_qk_norm(k, self.k_norm)
    return q, k, v


def _linear(x, w, b):
    """``simple_attn_linear``: x [batch, pos, d_model] @ w [head, d_model, d_head] + b."""
    if x.device != w.device:
        w = w.to(x.device)
    if x.device != b.device:
        b = b.to(x.device)
    heads, d_model, d_head = w.shape
    b = nonzero_bias(b)
    out = F.linear(x, w.permute(0, 2, 1).reshape(heads * d_head, d_model), None if b is None else b.reshape(heads * d_head))
    return out.reshape(x.shape[0], x.shape[1], heads, d_head)


def _rotate(self, x, offset: int):
    """``apply_rotary(x, offset)`` for positions offset, offset+1, … (no padding): the same
    element-wise products, without the position-id gather; TransformerLens' own call where
    its table must grow first."""
    n, rd = x.shape[1], self.cfg.rotary_dim
    if offset + n > self.rotary_cos.shape[0] or x.device != self.rotary_cos.device:
        return self.apply_rotary(x, offset, None)
    cos = self.rotary_cos[offset : offset + n, None, :]
    sin = self.rotary_sin[offset : offset + n, None, :]
    x_rot = x[..., :rd]
    if self.cfg.rotary_adjacent_pairs:
        flip = torch.stack((-x_rot[..., 1::2], x_rot[..., ::2]), dim=-1).flatten(-2)
    else:
        half = rd // 2
        flip = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    out = x_rot * cos + flip * sin
    return out if rd == x.shape[-1] else torch.cat([out, x[..., rd:]], dim=-1)


@dataclass
class _RotatedKeys:
    source: torch.Tensor  # the entry's past_keys this rotation belongs to
    version: int
    cos: torch.Tensor  # the rotary table it was made with
    rotated: torch.Tensor


def _rotated_keys(self, entry, past, k, k_new, offset, attention_mask, plain):
    """TransformerLens' ``apply_rotary(k, 0, attention_mask)`` over the whole cache, reusing
    the rotation of the cached part when it is known to be unchanged (see the module doc)."""
    if not plain:
        return self.apply_rotary(k, 0, attention_mask)
    if entry is None or past.is_inference():
        return _rotate(self, k, 0)
    memo = entry.__dict__.get("_mechscope_rotated")
    if (
        memo is not None and memo.source is past and memo.version == past._version
        and memo.cos is self.rotary_cos and memo.rotated.shape[1] == offset
    ):
        rotated = torch.cat([memo.rotated, _rotate(self, k_new, offset)], dim=1)
    else:
        rotated = _rotate(self, k, 0)
    if not entry.frozen and entry.past_keys is not past:
        entry._mechscope_rotated = _RotatedKeys(entry.past_keys, entry.past_keys._version, self.rotary_cos, rotated)
    return rotated


def _sdpa(self, q, k, v, offset: int, attention_mask, plain: bool) -> torch.Tensor:
    """z [batch, query, head, d_head] = softmax(q·kᵀ / attn_scale, causal + window + padding)·v."""
    cfg = self.cfg
    n_q, n_k = q.shape[1], k.shape[1]
    window = cfg.window_size if self.attn_type == "local" and n_k > cfg.window_size else None
    mask, causal, empty = None, False, None
    if plain and window is None:
        if n_q == n_k:
            causal = True
        elif n_q > 1:
            mask = _causal_mask(offset, n_q, n_k, None, q.device)
    else:
        mask = _causal_mask(offset, n_q, n_k, window, q.device)[None, None]  # [1, 1, q, k]
        if not plain:
            mask = mask & attention_mask.to(device=q.device, dtype=torch.bool)[:, None, None, :]
            empty = ~mask.any(-1)  # [batch, 1, q]: query rows that see no key (left padding)
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = kh.shape[1] != qh.shape[1]
    if gqa and qh.device.type not in NATIVE_GQA_DEVICES:
        rep = qh.shape[1] // kh.shape[1]
        kh, vh, gqa = kh.repeat_interleave(rep, dim=1), vh.repeat_interleave(rep, dim=1), False
    z = F.scaled_dot_product_attention(
        qh, kh, vh, attn_mask=mask, is_causal=causal, scale=1.0 / float(self.attn_scale), enable_gqa=gqa,
    )
    if empty is not None:
        z = z.masked_fill(empty[..., None], 0.0)
    return z.transpose(1, 2)


def _causal_mask(offset: int, n_q: int, n_k: int, window: int | None, device) -> torch.Tensor:
    """[q, k] bool: key j visible from query offset+i iff j ≤ offset+i (and j > offset+i − window)."""
    qpos = torch.arange(offset, offset + n_q, device=device)[:, None]
    kpos = torch.arange(n_k, device=device)[None, :]
    mask = kpos <= qpos
    if window is not None:
        mask = mask & (kpos > qpos - window)
    return mask


def _project_out(self, z: torch.Tensor) -> torch.Tensor:
    """TransformerLens' output projection (``AbstractAttention.forward`` after ``hook_z``)."""
    cfg = self.cfg
    heads, d_head, d_model = self.W_O.shape
    if not cfg.use_attn_result:
        w = self.W_O.permute(2, 0, 1).reshape(d_model, heads * d_head)
        if w.device != z.device:
            w = w.to(z.device)
        b_O = nonzero_bias(self.b_O if self.b_O.device == z.device else self.b_O.to(z.device))
        if z.dtype != w.dtype:
            z = z.to(w.dtype)
        z = z.reshape(z.shape[0], z.shape[1], heads * d_head)
        if z.device.type == "mps":
            return torch.matmul(z, w.T) + b_O
        return F.linear(z, w, b_O)
    w = self.W_O[None, None]  # [1, 1, head, d_head, d_model]
    if w.device != z.device:
        w = w.to(z.device)
    if z.dtype != w.dtype:
        z = z.to(w.dtype)
    result = _hook(self.hook_result, (z[..., None] * w).sum(-2))  # [batch, pos, head, d_model]
    return result.sum(2) + self.b_O
