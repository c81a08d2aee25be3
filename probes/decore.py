"""DeCoRe decoding (Gema et al. 2024; REFERENCES §6) as a registered strategy.

The "masked" model is the same model with its top-N retrieval heads masked (uniform
attention, :class:`probes.interventions.HeadMask`). Each step picks

    argmax_w [(1 + α) · log p_base(w) − α · log p_masked(w)]

with α = the entropy (nats) of the base next-token distribution (``alpha=None``, the
entropy-guided default) or a fixed α (the paper's fixed variant uses 0.5). α = 0 is greedy.

The base distribution is the step's logits from :func:`probes.decoding.generate` (any
interventions and KV-cache policy in force). The masked distribution comes from one extra
forward pass per step over the whole text so far (no cache), under the head masks *and*
the generation's own interventions (its hooks stay attached): exact, O(T) per step. Importing
this module registers ``"decore"`` in :data:`probes.decoding.STRATEGIES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from probes.decoding import STRATEGIES, StepState
from probes.errors import InputError
from probes.interventions import HeadMask, applied
from probes.kv_policies import _Data


def masked_logprobs(model, tokens, heads) -> torch.Tensor:
    """log p(next | tokens) with ``heads`` masked (uniform attention), [d_vocab] float32."""
    ids = torch.tensor([list(tokens)], device=model.cfg.device)
    with applied(model, [HeadMask(int(l), int(h)) for l, h in heads]), torch.no_grad():
        return model(ids)[0, -1].float().log_softmax(-1)


def entropy(logprobs: torch.Tensor) -> float:
    """Shannon entropy in nats of a log-probability vector."""
    p = logprobs.exp()
    return float(-(p * torch.where(p > 0, logprobs, torch.zeros_like(logprobs))).sum())


@STRATEGIES.register("decore")
@dataclass(frozen=True)
class DeCoRe(_Data):
    """DeCoRe with the given retrieval ``heads`` ((layer, head), …) masked in the contrast
    model; ``alpha=None``: entropy-guided α, else fixed α."""

    heads: tuple = ()
    alpha: float | None = None
    name: ClassVar[str] = "decore"
    needs_model: ClassVar[bool] = True

    def __post_init__(self):
        object.__setattr__(self, "heads", tuple((int(l), int(h)) for l, h in self.heads))
        if not self.heads:
            raise InputError("DeCoRe needs at least one retrieval head to mask.")
        if self.alpha is not None and self.alpha < 0:
            raise InputError("DeCoRe's α must be >= 0.")

    def select(self, state: StepState) -> int:
        for l, h in self.heads:
            HeadMask(l, h).validate(state.model)
        base = state.logits.float().log_softmax(-1)
        a = entropy(base) if self.alpha is None else float(self.alpha)
        if a == 0.0:
            return int(torch.argmax(base))
        masked = masked_logprobs(state.model, state.tokens, self.heads).to(base.device)
        state.scratch.setdefault("alphas", []).append(a)
        return int(torch.argmax((1 + a) * base - a * masked))
