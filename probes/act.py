"""ACT — attention calibration of hidden sinks (Yu et al. 2024, "Unveiling and Harnessing
Hidden Attention Sinks"; reference code GATECH-EIC/ACT).

On the post-softmax pattern of a selected head, key k is a *sink* when its mean received
attention Σ_i A[i,k] / (number of queries that see k) exceeds ``threshold`` (0.1). The
first sink (normally the first token) is kept; the others are *hidden sinks*. Their columns
are multiplied by ``beta`` (0.4) and the removed mass of each row is handed to the keys
that are not hidden sinks in proportion to their attention, so rows still sum to 1. As in
the reference code, the kept first sink is among the receiving keys.

Sinks are found on the block the hook sees. On a full forward pass that is the square
T×T pattern, as in the reference. Under a KV cache each step sees one query row, so a key
is a sink for that step when the row gives it more than ``threshold`` — which is what the
reference code computes during cached decoding too. ACT is therefore *not* cache-invariant
(unlike the foundation's other interventions); compare it with and without cache only on
full passes.

For right-padded batches give ``lengths`` (real length per row): padded queries would
otherwise count in the column means.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechscope.probes import hooknames
from mechscope.probes.errors import InputError, check_range
from mechscope.probes.interventions import INTERVENTIONS, Data

BETA = 0.4  # Yu et al.'s scale of hidden-sink columns: the one default of every ACT entry point


def column_mean(pattern: torch.Tensor, q_offset: int = 0, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Mean attention each key receives from the queries that can see it.

    ``pattern`` [..., q, K] holds queries at absolute positions ``q_offset .. q_offset+q-1``;
    key j is seen by queries i >= j. With ``lengths`` ([B], rows of a [B, ..., q, K] pattern),
    queries at or beyond a row's length are ignored. Returns [..., K]. For a square causal
    pattern this is Gu et al.'s α_k and ACT's sink criterion (docs/sinks.md#sink-metric, docs/sinks.md#hidden-sinks).
    """
    q, k = pattern.shape[-2], pattern.shape[-1]
    kpos = torch.arange(k, device=pattern.device)
    first_visible = kpos.clamp(min=q_offset)  # the first query that sees key j
    if lengths is None:
        colsum = pattern.sum(-2)
        count = (q_offset + q - first_visible).to(pattern.dtype)
        return colsum / count.clamp(min=1)
    lengths = lengths.to(pattern.device)
    qpos = torch.arange(q_offset, q_offset + q, device=pattern.device)
    qmask = (qpos[None, :] < lengths[:, None]).to(pattern.dtype)  # [B, q]
    lead = (qmask.shape[0],) + (1,) * (pattern.ndim - 3)
    colsum = (qmask.reshape(lead + (1, q)) @ pattern).squeeze(-2)  # [B, ..., K]
    end = lengths.clamp(max=q_offset + q)[:, None]  # one past the last real query
    count = (end - first_visible[None, :]).clamp(min=0).to(pattern.dtype).reshape(lead + (k,))
    return colsum / count.clamp(min=1)


def hidden_sink_mask(mean_received: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """[..., K] bool: keys above ``threshold`` except the first such key on each row."""
    sinks = mean_received > threshold
    return sinks & (sinks.int().cumsum(-1) > 1)


def calibrate(
    pattern: torch.Tensor,
    hidden: torch.Tensor,
    beta: float = BETA,
) -> torch.Tensor:
    """ACT on a pattern [..., q, K] given the hidden-sink key mask [..., K]: hidden columns
    × ``beta``; each row's removed mass goes to the other keys in proportion to their
    attention. A row with no other attended key is left as it was."""
    h = hidden[..., None, :].to(pattern.dtype)  # [..., 1, K]
    removed = (pattern * h).sum(-1, keepdim=True) * (1 - beta)
    others = pattern * (1 - h)
    total = others.sum(-1, keepdim=True)
    ok = total > 0
    share = torch.where(ok, others / total.clamp(min=torch.finfo(pattern.dtype).tiny), torch.zeros_like(others))
    out = pattern * (1 - h * (1 - beta)) + removed * share
    return torch.where(ok, out, pattern)


@INTERVENTIONS.register("act")
@dataclass(frozen=True)
class ACTCalibration(Data):
    """Calibrate hidden sinks on ``heads`` of ``layer`` (an intervention for
    :func:`probes.interventions.applied`, ``generate``, ``capture.run``)."""

    layer: int
    heads: tuple[int, ...]
    beta: float = BETA
    threshold: float = 0.1
    lengths: tuple[int, ...] | None = None  # real lengths of right-padded batch rows

    def validate(self, model) -> None:
        check_range("layer", self.layer, model.cfg.n_layers)
        if not self.heads:
            raise InputError("ACT calibration needs at least one head.")
        for h in self.heads:
            check_range("head", h, model.cfg.n_heads)
        if not 0 <= self.beta <= 1:
            raise InputError(f"beta must lie in [0, 1], not {self.beta!r}.")
        if not 0 < self.threshold < 1:
            raise InputError(f"The sink threshold must lie in (0, 1), not {self.threshold!r}.")

    def hooks(self, model):
        heads = list(self.heads)
        beta, thr = self.beta, self.threshold
        lengths = None if self.lengths is None else torch.tensor(self.lengths)

        def act(pattern: torch.Tensor, hook) -> torch.Tensor:
            q_offset = pattern.shape[-1] - pattern.shape[-2]
            sub = pattern[:, heads]
            if lengths is not None and len(lengths) != sub.shape[0]:
                raise InputError(f"ACT was given {len(lengths)} row lengths for a batch of {sub.shape[0]}.")
            mean = column_mean(sub, q_offset, lengths)
            out = pattern.clone()
            out[:, heads] = calibrate(sub, hidden_sink_mask(mean, thr), beta)
            return out

        return [(hooknames.name("pattern", self.layer), act)]

    def describe(self) -> str:
        return f"ACT L{self.layer} heads {list(self.heads)} β={self.beta:g}"


def act_interventions(heads: list[tuple[int, int]], beta: float = BETA, threshold: float = 0.1,
                      lengths: tuple[int, ...] | None = None) -> list[ACTCalibration]:
    """One ACTCalibration per layer from (layer, head) pairs."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(int(layer), []).append(int(head))
    return [ACTCalibration(layer, tuple(sorted(set(hs))), beta, threshold, lengths) for layer, hs in sorted(by_layer.items())]
