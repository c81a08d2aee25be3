"""A transformer block's forward without TransformerLens' per-module machinery, when nothing
in the block is hooked.

TransformerLens' ``TransformerBlock`` runs a dozen ``nn.Module`` calls per block and token
step (hook points, both norms three times, the MLP): about half of a decoding step's time on
a small model is spent in that Python. When no hook point of the block outside its attention
has a hook (attention decides for itself, :mod:`probes.fused_attention`), :func:`install`'s
forward computes the same arithmetic directly — TransformerLens' RMSNorm formula
``x / sqrt(mean(x²) + ε) · w``, the gated SiLU MLP ``W_out(silu(W_gate x) · W_in x + b_in) +
b_out``, the two residual additions — so the outputs are bitwise equal; zero biases are not
added (adding 0.0 changes no value). Llama-style blocks only (RMSNorm before attention and
MLP, gated SiLU MLP, one device, float32/float64); any other block, and any hooked one, runs
TransformerLens' own forward. ``MECHSCOPE_FUSED_ATTENTION=0`` turns this off with the fused
attention.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from transformer_lens.hook_points import HookPoint

from mechscope.probes.module_state import any_hooked, nonzero_bias


def unsupported_reason(block) -> str | None:
    """Why this block always runs TransformerLens' own forward (None: it can run lean)."""
    from transformer_lens.components import RMSNorm
    from transformer_lens.components.mlps.gated_mlp import GatedMLP

    cfg = block.cfg
    if type(block.ln1) is not RMSNorm or type(getattr(block, "ln2", None)) is not RMSNorm:
        return "norms other than RMSNorm"
    if type(getattr(block, "mlp", None)) is not GatedMLP or cfg.act_fn != "silu":
        return "an MLP other than the gated SiLU one"
    if cfg.dtype not in (torch.float32, torch.float64):
        return f"{cfg.dtype} (TransformerLens' RMSNorm computes in float32 and casts back)"
    # (per-head / split q/k/v inputs and hook_mlp_in can be switched at any time: _forward checks them)
    flags = {
        "use_normalization_before_and_after": "norms after attention and MLP",
        "attn_only": "attention-only blocks", "parallel_attn_mlp": "parallel attention and MLP",
    }
    for flag, what in flags.items():
        if getattr(cfg, flag, False):
            return what
    if getattr(cfg, "n_devices", 1) != 1:
        return "blocks spread over several devices"
    if cfg.positional_embedding_type == "shortformer":
        return "shortformer position embeddings"
    from transformer_lens.components.transformer_block import POST_NORM_ARCHITECTURES

    if cfg.original_architecture in POST_NORM_ARCHITECTURES:
        return "post-norm blocks"
    return None


def install(model, state) -> None:
    """Give every supported block of ``model`` the lean forward, switched by ``state.enabled``
    (the fused-attention state)."""
    for block in getattr(model, "blocks", []):
        reason = unsupported_reason(block)
        block.__dict__["_mechscope_block_unsupported"] = reason
        if reason is not None:
            continue
        attn_points = {id(m) for m in block.attn.modules()}
        block.__dict__["_mechscope_fused"] = state
        block.__dict__["_mechscope_points"] = [
            m for m in block.modules() if isinstance(m, HookPoint) and id(m) not in attn_points
        ]
        block.forward = types.MethodType(_forward, block)


def uninstall(model) -> None:
    for block in getattr(model, "blocks", []):
        for name in ("forward", "_mechscope_fused", "_mechscope_points", "_mechscope_block_unsupported"):
            block.__dict__.pop(name, None)


def _rms(norm, x: torch.Tensor) -> torch.Tensor:
    """TransformerLens' ``RMSNorm.forward`` without its hook points (same operations)."""
    scale = (x.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
    return (x / scale) * norm.w


def _forward(self, resid_pre, shortformer_pos_embed=None, past_kv_cache_entry=None, attention_mask=None):
    state, cfg = self._mechscope_fused, self.cfg
    # the flags TransformerLens lets a user switch at run time (set_use_split_qkv_input, ...)
    switched = cfg.use_split_qkv_input or cfg.use_attn_in or cfg.use_hook_mlp_in
    # TransformerLens' RMSNorm computes in float32 for other dtypes (a model cast after loading)
    low_precision = resid_pre.dtype not in (torch.float32, torch.float64)
    if (not state.enabled or switched or low_precision or shortformer_pos_embed is not None
            or any_hooked(self._mechscope_points)):
        return type(self).forward(self, resid_pre, shortformer_pos_embed=shortformer_pos_embed,
                                  past_kv_cache_entry=past_kv_cache_entry, attention_mask=attention_mask)
    x = _rms(self.ln1, resid_pre)
    resid_mid = resid_pre + self.attn(query_input=x, key_input=x, value_input=x,
                                      past_kv_cache_entry=past_kv_cache_entry, attention_mask=attention_mask)
    mlp = self.mlp
    h = _rms(self.ln2, resid_mid)
    post = F.silu(F.linear(h, mlp.W_gate.T.contiguous())) * F.linear(h, mlp.W_in.T.contiguous())
    b_in = nonzero_bias(mlp.b_in)
    if b_in is not None:
        post = post + b_in
    return resid_mid + F.linear(post, mlp.W_out.T.contiguous(), nonzero_bias(mlp.b_out))
