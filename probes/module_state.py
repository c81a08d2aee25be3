"""What the fast paths ask of a module before they skip TransformerLens' own code: is
anything hooked on it, is a bias all zeros."""

from __future__ import annotations

import torch
from torch.nn.modules import module as _nn_module


def any_hooked(modules) -> bool:
    """Whether any of ``modules`` (hook points or other modules) has a hook of its own, or a
    global module hook is registered: then its forward must run as TransformerLens wrote it."""
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks for m in modules
    ) or bool(
        _nn_module._global_forward_hooks or _nn_module._global_forward_pre_hooks
        or _nn_module._global_backward_hooks or _nn_module._global_backward_pre_hooks
    )


def nonzero_bias(b: torch.Tensor) -> torch.Tensor | None:
    """``b``, or None when every entry is zero (adding 0.0 changes no value; checked again
    after any in-place edit of ``b``)."""
    key = (b.data_ptr(), b._version)
    memo = getattr(b, "_mechscope_zero", None)
    if memo is None or memo[0] != key:
        memo = (key, not bool(b.detach().any()))
        b._mechscope_zero = memo
    return None if memo[1] else b
