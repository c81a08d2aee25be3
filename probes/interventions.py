"""Interventions as data; hooks only inside :func:`applied`.

An intervention is a small frozen dataclass. It becomes TransformerLens forward hooks only
inside ``with applied(model, [...]):``, which holds the model's lock for the whole block and
removes every hook it added on exit — also when the block raises. Two threads (or two
dashboard sessions) sharing a model therefore never run under each other's hooks.

Every hook here works position-wise or on the current [query, key] block, so it gives the
same result with or without a KV cache (checked in tests).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable, Iterator, Literal, Protocol, Sequence

import torch

from mechscope.probes import hooknames
from mechscope.probes.errors import InputError, check_range
from mechscope.probes.locks import model_lock
from mechscope.probes.serial import Data, Registry

HookList = list[tuple[str, Callable]]

#: every intervention kind; ``from_dict`` rebuilds one from its saved data
INTERVENTIONS = Registry("intervention")


class Intervention(Protocol):
    def validate(self, model) -> None: ...

    def hooks(self, model) -> HookList: ...

    def describe(self) -> str: ...

    def to_dict(self) -> dict: ...


def positionwise(iv) -> bool:
    """Whether ``iv``'s hooks treat every position alike, whatever the pass's shape (how many
    positions it holds, where it starts): then a pass may hold positions in any arrangement —
    contrastive search's shared-row pass relies on it. Kinds say so with a ``positionwise``
    attribute; unknown kinds are not."""
    return bool(getattr(iv, "positionwise", False))


def from_dict(data: dict) -> Intervention:
    """Rebuild an intervention from :meth:`to_dict` output (registered kinds only)."""
    return INTERVENTIONS.from_dict(data)


def _check_layer(model, layer: int) -> None:
    check_range("layer", layer, model.cfg.n_layers)


@INTERVENTIONS.register("head_mask")
@dataclass(frozen=True)
class HeadMask(Data):
    """Knock out one attention head.

    ``mode="uniform"`` (default) is the retrieval-head papers' masking (Wu et al. 2024; Gema
    et al. 2024): the head's pre-softmax scores are set to zero on every visible key, so it
    attends uniformly over its causal context. ``mode="zero"`` zeroes the head's output z.
    """

    positionwise: ClassVar[bool] = True

    layer: int
    head: int
    mode: Literal["uniform", "zero"] = "uniform"

    def validate(self, model) -> None:
        _check_layer(model, self.layer)
        check_range("head", self.head, model.cfg.n_heads)
        if self.mode not in ("uniform", "zero"):
            raise InputError(f"Head-mask mode must be 'uniform' or 'zero', not {self.mode!r}.")

    def hooks(self, model) -> HookList:
        h = self.head
        if self.mode == "uniform":

            def uniform(scores: torch.Tensor, hook) -> torch.Tensor:
                out = scores.clone()
                s = out[:, h]
                out[:, h] = torch.where(torch.isfinite(s), torch.zeros_like(s), s)
                return out

            return [(hooknames.name("attn_scores", self.layer), uniform)]

        def zero(z: torch.Tensor, hook) -> torch.Tensor:
            out = z.clone()
            out[:, :, h] = 0.0
            return out

        return [(hooknames.name("z", self.layer), zero)]

    def describe(self) -> str:
        return f"mask {hooknames.head_label(self.layer, self.head)} ({self.mode})"


@INTERVENTIONS.register("neuron_clamp")
@dataclass(frozen=True)
class NeuronClamp(Data):
    """Set (``value``) or multiply (``scale``) one MLP neuron's activation at every position.

    The neuron is a column of ``blocks.{layer}.mlp.hook_post`` — for gated MLPs that is the
    product act(gate)·up, the input of W_out.
    """

    positionwise: ClassVar[bool] = True

    layer: int
    neuron: int
    value: float | None = None
    scale: float | None = None

    def validate(self, model) -> None:
        _check_layer(model, self.layer)
        check_range("neuron", self.neuron, model.cfg.d_mlp)
        if (self.value is None) == (self.scale is None):
            raise InputError("A neuron clamp takes exactly one of value= or scale=.")

    def hooks(self, model) -> HookList:
        n, value, scale = self.neuron, self.value, self.scale

        def clamp(act: torch.Tensor, hook) -> torch.Tensor:
            out = act.clone()
            out[..., n] = value if value is not None else out[..., n] * scale
            return out

        return [(hooknames.name("mlp_post", self.layer), clamp)]

    def describe(self) -> str:
        how = f"= {self.value:g}" if self.value is not None else f"× {self.scale:g}"
        return f"neuron L{self.layer}N{self.neuron} {how}"


@INTERVENTIONS.register("steering_vector")
@dataclass(frozen=True)
class SteeringVector(Data):
    """Add ``scale · vector`` to the residual stream at ``blocks.{layer}.hook_{point}``."""

    positionwise: ClassVar[bool] = True

    layer: int
    vector: tuple[float, ...]
    scale: float = 1.0
    point: Literal["resid_pre", "resid_mid", "resid_post"] = "resid_post"

    @classmethod
    def from_tensor(cls, layer: int, vector, scale: float = 1.0, point: str = "resid_post") -> "SteeringVector":
        return cls(layer, tuple(float(x) for x in torch.as_tensor(vector).reshape(-1)), scale, point)  # type: ignore[arg-type]

    def validate(self, model) -> None:
        _check_layer(model, self.layer)
        if len(self.vector) != model.cfg.d_model:
            raise InputError(f"Steering vector has {len(self.vector)} dims; the model's d_model is {model.cfg.d_model}.")
        if self.point not in ("resid_pre", "resid_mid", "resid_post"):
            raise InputError(f"Unknown residual point {self.point!r}.")

    def hooks(self, model) -> HookList:
        vec = torch.tensor(self.vector, dtype=model.cfg.dtype, device=model.cfg.device) * self.scale

        def steer(resid: torch.Tensor, hook) -> torch.Tensor:
            return resid + vec.to(resid.dtype)

        return [(hooknames.name(self.point, self.layer), steer)]

    def describe(self) -> str:
        return f"steer L{self.layer} {self.point} ×{self.scale:g}"


@dataclass(frozen=True)
class AttentionEdit:
    """Edit post-softmax attention patterns of one layer with a user function.

    ``fn(pattern, q_offset) -> pattern`` receives the [batch, heads, query, key] pattern of the
    selected heads (all heads when ``heads`` is None) and the absolute position of the first
    query (``key_len - query_len``; non-zero under a KV cache). Rows it returns should sum to 1.

    It holds a function, so it is the one intervention that cannot be saved as data: use it
    for experiments in code; anything the dashboard or a saved result needs is a registered
    kind.
    """

    layer: int
    fn: Callable[[torch.Tensor, int], torch.Tensor] = field(compare=False)
    heads: tuple[int, ...] | None = None
    name: str = "edit"

    def validate(self, model) -> None:
        _check_layer(model, self.layer)
        for h in self.heads or ():
            check_range("head", h, model.cfg.n_heads)

    def hooks(self, model) -> HookList:
        heads = list(self.heads) if self.heads is not None else None
        fn = self.fn

        def edit(pattern: torch.Tensor, hook) -> torch.Tensor:
            q_offset = pattern.shape[-1] - pattern.shape[-2]
            if heads is None:
                return fn(pattern, q_offset)
            out = pattern.clone()
            out[:, heads] = fn(pattern[:, heads], q_offset)
            return out

        return [(hooknames.name("pattern", self.layer), edit)]

    def describe(self) -> str:
        return f"{self.name} L{self.layer}" + (f" heads {list(self.heads)}" if self.heads else "")

    def to_dict(self) -> dict:
        raise InputError("An AttentionEdit holds a Python function and cannot be saved; use a registered intervention.")


@INTERVENTIONS.register("rows")
@dataclass(frozen=True)
class Rows(Data):
    """Apply ``intervention`` to the batch rows ``rows`` only; other rows run untouched.

    Lets one batched forward carry a baseline row and intervened rows (the Playground's
    comparison, DeCoRe's masked model). Works for any intervention whose hooks take and
    return tensors with the batch on axis 0.
    """

    intervention: object
    rows: tuple[int, ...] = (1,)

    def validate(self, model) -> None:
        self.intervention.validate(model)
        if not self.rows or any((not isinstance(r, int)) or r < 0 for r in self.rows):
            raise InputError(f"Rows must be non-negative batch indices, not {self.rows!r}.")

    def hooks(self, model) -> HookList:
        rows = list(self.rows)
        return [(name, _rows_only(fn, rows)) for name, fn in self.intervention.hooks(model)]

    def describe(self) -> str:
        return f"{self.intervention.describe()} [rows {', '.join(map(str, self.rows))}]"


def _rows_only(fn: Callable, rows: list[int]) -> Callable:
    def hook(tensor: torch.Tensor, hook=None):
        new = fn(tensor, hook)
        if new is None:
            return None
        if max(rows) >= tensor.shape[0]:
            raise InputError(f"Intervention rows {rows} do not exist in a batch of {tensor.shape[0]}.")
        out = tensor.clone()
        out[rows] = new[rows].to(out.dtype)
        return out

    return hook


#: where head masks (or any interventions) act during generation: ``"decode"`` — the
#: retrieval-head references' protocol (Wu et al. 2024, nightdessert/Retrieval_Head
#: ``needle_in_haystack_with_mask.py``; Gema et al. 2024, aryopg/DeCoRe ``decore_entropy.py``):
#: the prompt but its last token is prefilled *without* them, and the last prompt token
#: (whose logits give the first new token) and every generated token are fed with them;
#: ``"prompt_and_decode"`` — they act on every position, the prompt's included.
MASK_SCOPES = ("decode", "prompt_and_decode")


def check_scope(scope: str) -> str:
    if scope not in MASK_SCOPES:
        raise InputError(f"Mask scope must be one of {', '.join(MASK_SCOPES)}, not {scope!r}.")
    return scope


class Gate:
    """An on/off switch for hooks: :meth:`wrap` gives hooks that run only while ``on`` (a
    switched-off hook leaves its tensor as it is). Decoding loops use it to keep
    interventions off the prompt's prefill (``MASK_SCOPES``)."""

    def __init__(self, on: bool = False):
        self.on = on

    def wrap(self, hooks: HookList) -> HookList:
        return [(name, self._gated(fn)) for name, fn in hooks]

    def _gated(self, fn: Callable) -> Callable:
        def hook(tensor: torch.Tensor, hook=None):
            return fn(tensor, hook) if self.on else None

        return hook


def hooks_for(model, interventions: Iterable[Intervention]) -> HookList:
    hooks: HookList = []
    for iv in interventions:
        iv.validate(model)
        hooks.extend(iv.hooks(model))
    return hooks


@contextmanager
def applied(
    model, interventions: Sequence[Intervention] = (), extra_hooks: HookList = ()
) -> Iterator[object]:
    """Hold the model's lock and run the block with the interventions' hooks (and any
    ``extra_hooks`` from the probe layer) attached; always detach them on exit."""
    lock = model_lock(model)
    with lock:
        hooks = hooks_for(model, interventions) + list(extra_hooks)
        with model.hooks(fwd_hooks=hooks, reset_hooks_end=True):
            yield model
