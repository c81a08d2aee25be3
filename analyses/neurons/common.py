"""What every neuron analysis shares: the named labelling methods, neuron directions and
the context of a token (the unembedding, with or without the final norm's γ, is
``probes.readout.unembedding``)."""

from __future__ import annotations

from typing import Literal

import torch

from mechscope.probes.errors import InputError, check_range
from mechscope.probes.tokens import str_token, str_tokens  # noqa: F401  (str_token re-exported)

METHODS = {"paper": ("up", "raw"), "write": ("out", "final")}  # method -> (direction, norm)


def resolve_method(method: str, direction: str | None = None, norm: str | None = None) -> tuple[str, str]:
    """(direction, norm) of a named decoding method; ``custom`` takes them as given."""
    if method == "custom":
        return direction or "out", norm or "final"
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)} or 'custom', not {method!r}.")
    return METHODS[method]


def method_label(method: str, direction: str, norm: str) -> str:
    if method == "paper":
        return "paper (up-projection → LM head, no norm)"
    if method == "write":
        return "write (W_out → final norm γ → unembedding)"
    return f"custom ({direction} → {'final norm γ → ' if norm == 'final' else ''}unembedding)"


Direction = Literal["out", "up", "gate"]


def check_norm_direction(model, norm: str, direction: str) -> None:
    if norm not in ("final", "raw"):
        raise InputError(f"norm must be 'final' or 'raw', not {norm!r}.")
    if direction not in ("out", "up", "gate"):
        raise InputError(f"direction must be 'out', 'up' or 'gate', not {direction!r}.")
    if direction == "gate" and not model.cfg.gated_mlp:
        raise InputError("direction='gate' needs a gated MLP; this model's MLP is not gated.")


def neuron_directions(model, layer: int, direction: Direction = "out") -> torch.Tensor:
    """[d_mlp, d_model] float32: the vector each neuron of ``layer`` writes (``out``) or
    reads (``up`` = W_in column, ``gate`` = W_gate column)."""
    check_range("layer", layer, model.cfg.n_layers)
    blk = model.blocks[layer].mlp
    if direction == "out":
        w = blk.W_out
    elif direction == "up":
        w = blk.W_in.T
    else:
        w = blk.W_gate.T
    return w.detach().float()


def layer_matvec(model, layer: int, direction: str, v: torch.Tensor) -> torch.Tensor:
    """[d_mlp]: every neuron direction of ``layer`` dotted with ``v`` (no copies)."""
    mlp = model.blocks[layer].mlp
    if direction == "out":
        return mlp.W_out.detach().float() @ v
    W = mlp.W_in if direction == "up" else mlp.W_gate
    return v @ W.detach().float()




def context(model, ids: torch.Tensor, pos: int, window: int) -> str:
    """``window`` tokens before position ``pos``, the token in ⟦ ⟧, and three after."""
    lo = max(0, pos - window)
    before = "".join(str_tokens(model, ids[lo:pos]))
    after = "".join(str_tokens(model, ids[pos + 1 : pos + 4]))
    tok = "".join(str_tokens(model, ids[pos : pos + 1]))
    return f"{'…' if lo > 0 else ''}{before}⟦{tok}⟧{after}"
