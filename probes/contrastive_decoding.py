"""Contrastive decoding (Li et al. 2022, "Contrastive Decoding: Open-ended Text Generation as
Optimization") as a registered strategy — not to be confused with contrastive search
(:mod:`probes.contrastive`).

Each step keeps the plausible tokens V_head = {y : p_expert(y) ≥ β · max p_expert} (β = 0.1)
and picks

    argmax_{y ∈ V_head} log p_expert(y) − log p_amateur(y)

The expert is the generation's model (its step logits, with any interventions). The amateur
(exactly one of):

* ``amateur_model``: another model with the same tokenizer, by name — a model handed to
  :func:`register_amateur` (e.g. one already loaded), else loaded by
  :func:`probes.models.load_model`. It runs its own KV-cached pass per step.
* ``amateur_layer = l``: the same model exited early — the residual stream entering block l
  (l blocks applied) through the final norm and unembedding (the logit lens at layer l).
  Free: read by a hook from the expert's own forward pass.
* ``amateur_heads``: the same model with these (layer, head)s masked (uniform attention,
  :class:`probes.interventions.HeadMask`), as DeCoRe's masked model: a KV-cached side branch
  that, after its first pass, runs as row 1 of the expert's own forward pass with the masks
  on row 1 only (:func:`probes.decoding.side_logits`; one batched one-token pass per step;
  its own pass per step where the rows cannot be joined exactly).

``amateur_temperature`` τ divides the amateur's logits before its softmax (1: none; Li et al.
use τ < 1 for small amateurs). Importing this module registers ``"contrastive_decoding"`` in
:data:`probes.decoding.STRATEGIES`.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import ClassVar

import torch

from mechscope.probes import hooknames
from mechscope.probes.decoding import STRATEGIES, FullCache, StepState, _Stepper, side_logits
from mechscope.probes.errors import InputError
from mechscope.probes.interventions import HeadMask, applied
from mechscope.probes.readout import logits_from_resid
from mechscope.probes.serial import Data

#: in-memory amateur models by name (see :func:`register_amateur`)
_AMATEURS: dict = {}
#: the early-exit residual of the latest forward pass, per expert model
_EXIT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def register_amateur(name: str, model) -> None:
    """Make a loaded model available as ``ContrastiveDecoding(amateur_model=name)`` (held
    until ``register_amateur(name, None)``)."""
    if model is None:
        _AMATEURS.pop(str(name), None)
    else:
        _AMATEURS[str(name)] = model


def amateur_model(name: str, device=None):
    model = _AMATEURS.get(name)
    if model is not None:
        return model
    from mechscope.probes.models import load_model

    return load_model(name, device=str(device or "cpu"))


def check_same_tokenizer(expert, amateur) -> None:
    """Refuse an amateur whose vocabulary differs from the expert's."""
    if expert.cfg.d_vocab != amateur.cfg.d_vocab:
        raise InputError(f"The amateur's vocabulary ({amateur.cfg.d_vocab} tokens) differs from the expert's "
                         f"({expert.cfg.d_vocab}); contrastive decoding needs the same tokenizer.")
    te, ta = expert.tokenizer, amateur.tokenizer
    if (te is None) != (ta is None) or (te is not None and te.get_vocab() != ta.get_vocab()):
        raise InputError("The amateur's tokenizer differs from the expert's; contrastive decoding needs the same one.")


@STRATEGIES.register("contrastive_decoding")
@dataclass(frozen=True)
class ContrastiveDecoding(Data):
    """Contrastive decoding: among tokens with p_expert ≥ β·max p_expert, argmax
    log p_expert − log p_amateur; the amateur is ``amateur_model``, ``amateur_layer``
    (early exit) or ``amateur_heads`` (heads masked)."""

    beta: float = 0.1
    amateur_model: str | None = None
    amateur_layer: int | None = None
    amateur_heads: tuple = ()
    amateur_temperature: float = 1.0
    name: ClassVar[str] = "contrastive_decoding"
    needs_model: ClassVar[bool] = True

    def __post_init__(self):
        object.__setattr__(self, "amateur_heads", tuple((int(l), int(h)) for l, h in self.amateur_heads))
        b = self.beta
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b <= 1:
            raise InputError(f"Contrastive decoding's β must lie in (0, 1], not {b!r}.")
        if not self.amateur_temperature > 0:
            raise InputError("The amateur temperature must be > 0.")
        given = (self.amateur_model is not None) + (self.amateur_layer is not None) + bool(self.amateur_heads)
        if given != 1:
            raise InputError("Contrastive decoding needs exactly one amateur: amateur_model, amateur_layer "
                             "or amateur_heads.")
        if self.amateur_layer is not None and (isinstance(self.amateur_layer, bool) or self.amateur_layer < 0):
            raise InputError(f"Unknown amateur layer {self.amateur_layer!r}.")

    def validate(self, model) -> None:
        if self.amateur_layer is not None and not 0 <= self.amateur_layer < model.cfg.n_layers:
            raise InputError(f"Unknown amateur layer {self.amateur_layer}: the early exit reads the residual "
                             f"entering block l, 0 <= l < {model.cfg.n_layers}.")
        for l, h in self.amateur_heads:
            HeadMask(l, h).validate(model)

    def hooks(self, model):
        self.validate(model)
        if self.amateur_layer is None:
            return []
        held = _EXIT[model] = {}

        def keep(resid: torch.Tensor, hook) -> None:
            held["resid"] = resid[:, -1].detach()

        return [(hooknames.name("resid_pre", self.amateur_layer), keep)]

    def amateur_logits(self, state: StepState) -> torch.Tensor:
        model = state.model
        if self.amateur_layer is not None:
            held = _EXIT.get(model)
            if held is None or "resid" not in held:
                raise InputError("The early-exit amateur runs inside probes.decoding.generate.")
            return logits_from_resid(model, held["resid"][0]).float()
        if self.amateur_heads:
            return side_logits(state, "cd_masked", state.tokens, [HeadMask(l, h) for l, h in self.amateur_heads])
        amateur = state.scratch.get("cd_amateur_model")
        if amateur is None:
            amateur = state.scratch["cd_amateur_model"] = amateur_model(self.amateur_model, model.cfg.device)
            check_same_tokenizer(model, amateur)
        branch = state.scratch.get("cd_amateur")
        if branch is None:
            base = state.scratch.get("_stepper")
            policy = base.policy if base is not None and base.policy is not None else FullCache()
            branch = state.scratch["cd_amateur"] = _Stepper(amateur, policy)
        seen = len(branch.all_tokens[0])
        with applied(amateur, []), torch.no_grad():
            return branch.feed([list(state.tokens[seen:])])[0].float()

    def scores(self, state: StepState) -> torch.Tensor:
        """log p_expert − log p_amateur on V_head, −inf elsewhere ([d_vocab], float32)."""
        expert = state.logits.float().log_softmax(-1)
        amateur = (self.amateur_logits(state).to(expert.device) / self.amateur_temperature).log_softmax(-1)
        plausible = expert >= expert.max() + math.log(self.beta)
        return torch.where(plausible, expert - amateur, torch.full_like(expert, float("-inf")))

    def select(self, state: StepState) -> int:
        return int(torch.argmax(self.scores(state)))
