"""Context-aware decoding (Shi et al. 2023, "Trusting Your Evidence: Hallucinate Less with
Context-aware Decoding") as a registered strategy.

The model reads the query x twice — once after the context c, once without it — and each
step picks from

    (1 + α) · z(y | c, x) − α · z(y | x)

(logits; the paper then takes the softmax, and greedy decoding is its default, so the pick
is the argmax). α = 0.5 by default; α = 0 is greedy decoding on (c, x).

Usage: ``generate(model, query, strategy=CAD(context="..."))``. The prompt given to
:func:`probes.decoding.generate` is the query x; the strategy's context c goes in front of
it (after the BOS token when the prompt starts with one). The with-context view is a
KV-cached side branch fed c + x + the generated tokens; the step's own logits (the plain
generation over x) are the no-context view; the Generation's ``logprobs`` are those of the
no-context view. After the context's prefill (once), the with-context view rides along as
row 1 of the generation's own forward pass (its cache left-padded to the longer row, per-row
positions from the attention mask; :func:`probes.decoding.side_logits`): one batched
one-token pass per step. With a KV policy other than the full cache, without a cache,
with reducers, or with interventions that are not position-wise it runs its own pass
(two one-token passes per step).
Importing this module registers ``"cad"`` in :data:`probes.decoding.STRATEGIES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from mechscope.probes.decoding import STRATEGIES, StepState, side_logits
from mechscope.probes.errors import InputError
from mechscope.probes.serial import Data
from mechscope.probes.tokens import bos_id, encode


def check_alpha(alpha) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
        raise InputError(f"CAD's α must be a number >= 0, not {alpha!r}.")


@STRATEGIES.register("cad")
@dataclass(frozen=True)
class CAD(Data):
    """Context-aware decoding: argmax (1 + α)·z(y | c, x) − α·z(y | x); ``context`` is c
    (text, or token ids), the generation's prompt is x."""

    context: str | tuple = ""
    alpha: float = 0.5
    name: ClassVar[str] = "cad"
    needs_model: ClassVar[bool] = True

    def __post_init__(self):
        if not isinstance(self.context, str):
            object.__setattr__(self, "context", tuple(int(t) for t in self.context))
        if (isinstance(self.context, str) and not self.context.strip()) or not self.context:
            raise InputError("CAD needs a non-empty context.")
        check_alpha(self.alpha)

    def context_ids(self, model) -> list[int]:
        if isinstance(self.context, str):
            if model.tokenizer is None:
                raise InputError("A text context needs a model with a tokenizer; give token ids.")
            return [int(t) for t in encode(model, self.context, prepend_bos=False).tolist()]
        ids = list(self.context)
        if max(ids) >= model.cfg.d_vocab or min(ids) < 0:
            raise InputError(f"Context token ids must lie in 0..{model.cfg.d_vocab - 1}.")
        return ids

    def with_context(self, model, tokens) -> list[int]:
        """c inserted before the prompt's first token (after its BOS token, if any)."""
        ctx = self.context_ids(model)
        bos = bos_id(model)
        at = 1 if tokens and bos is not None and int(tokens[0]) == bos else 0
        return list(tokens[:at]) + ctx + list(tokens[at:])

    def scores(self, state: StepState) -> torch.Tensor:
        """The step's CAD logits [d_vocab] (float32)."""
        plain = state.logits.float()
        if self.alpha == 0:  # no contrast: the with-context view alone
            return self._with_context(state).to(plain.device)
        return (1 + self.alpha) * self._with_context(state).to(plain.device) - self.alpha * plain

    def _with_context(self, state: StepState) -> torch.Tensor:
        return side_logits(state, "cad_context", self.with_context(state.model, state.tokens))

    def select(self, state: StepState) -> int:
        return int(torch.argmax(self.scores(state)))
