"""DeCoRe decoding (Gema et al. 2024; docs/retrieval.md#decore) as a registered strategy.

The "masked" model is the same model with its top-N retrieval heads masked (uniform
attention, :class:`probes.interventions.HeadMask`). Each step picks

    argmax_w [(1 + α) · log p_base(w) − α · log p_masked(w)]

with α = the entropy (nats) of the base next-token distribution (``alpha=None``, the
entropy-guided default) or a fixed α (the paper's fixed variant uses 0.5). α = 0 is greedy.

**Where the heads are masked** (``mask_scope``). ``"decode"`` (default) is the reference's
protocol (aryopg/DeCoRe ``DeCoReEntropy.generate``): the prompt but its last token is
prefilled *once*, unmasked, and the masked branch starts from a copy of that cache; each
step then feeds the newest token to both branches — the base one plain, the masked one with
the heads masked — so the first token's masked distribution comes from a masked pass over
the last prompt token, and the masked branch's cache holds the plain model's prompt
entries. ``"prompt_and_decode"`` masks the heads on the prompt too (a stronger contrast).

The base distribution is the step's logits from :func:`probes.decoding.generate` (any
interventions and KV-cache policy in force). The masked branch is a second KV cache under
the same policy (a full cache when ``generate`` runs without one), fed one token per step
under the head masks *and* the generation's own interventions (its hooks stay attached):
two one-token passes per step, as in the reference. Reducers given to ``generate`` also
see the masked branch's passes. Importing this module registers ``"decore"`` in
:data:`probes.decoding.STRATEGIES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from mechscope.probes.decoding import STRATEGIES, StepState, _Stepper
from mechscope.probes.errors import InputError
from mechscope.probes.interventions import HeadMask, applied, check_scope
from mechscope.probes.kv_policies import FullCache
from mechscope.probes.serial import Data

#: the reference's default number of masked retrieval heads (aryopg/DeCoRe,
#: ``configs/decoder/decore_entropy.yaml``: ``num_retrieval_heads: 50``)
DEFAULT_HEADS = 50


def entropy(logprobs: torch.Tensor) -> float:
    """Shannon entropy in nats of a log-probability vector."""
    p = logprobs.exp()
    return float(-(p * torch.where(p > 0, logprobs, torch.zeros_like(logprobs))).sum())


@STRATEGIES.register("decore")
@dataclass(frozen=True)
class DeCoRe(Data):
    """DeCoRe with the given retrieval ``heads`` ((layer, head), …) masked in the contrast
    model; ``alpha=None``: entropy-guided α, else fixed α; ``mask_scope``: ``"decode"``
    (the reference: prompt prefilled unmasked) or ``"prompt_and_decode"``."""

    heads: tuple = ()
    alpha: float | None = None
    mask_scope: Literal["decode", "prompt_and_decode"] = "decode"
    name: ClassVar[str] = "decore"
    needs_model: ClassVar[bool] = True

    def __post_init__(self):
        object.__setattr__(self, "heads", tuple((int(l), int(h)) for l, h in self.heads))
        if not self.heads:
            raise InputError("DeCoRe needs at least one retrieval head to mask.")
        if self.alpha is not None and self.alpha < 0:
            raise InputError("DeCoRe's α must be >= 0.")
        check_scope(self.mask_scope)

    @property
    def wants_prefix_cache(self) -> bool:
        """Ask :func:`probes.decoding.generate` for the cache after the prompt's prefix."""
        return self.mask_scope == "decode"

    def select(self, state: StepState) -> int:
        for l, h in self.heads:
            HeadMask(l, h).validate(state.model)
        base = state.logits.float().log_softmax(-1)
        a = entropy(base) if self.alpha is None else float(self.alpha)
        if a == 0.0:
            return int(torch.argmax(base))
        masked = self.masked_logprobs(state).to(base.device)
        state.scratch.setdefault("alphas", []).append(a)
        return int(torch.argmax((1 + a) * base - a * masked))

    def masked_logprobs(self, state: StepState) -> torch.Tensor:
        """log p_masked(next | state.tokens), [d_vocab] float32: the masked branch's cache
        is fed the tokens it has not seen yet, under the head masks."""
        scratch, model = state.scratch, state.model
        branch = scratch.get("decore_masked")
        if branch is None:
            base = scratch.get("_stepper")
            policy = base.policy if base is not None and base.policy is not None else FullCache()
            branch = _Stepper(model, policy)
            if self.mask_scope == "decode":
                prefix = list(state.tokens[: len(state.tokens) - state.step - 1])  # the prompt but its last token
                cache = scratch.pop("prefix_cache", None)
                if cache is not None:  # generate's own prefill, copied: the prompt is prefilled once
                    branch.cache = cache
                    branch.all_tokens[0].extend(prefix)
                elif prefix:
                    branch.feed([prefix])  # unmasked
            scratch["decore_masked"] = branch
        pending = list(state.tokens[len(branch.all_tokens[0]):])
        with applied(model, [HeadMask(l, h) for l, h in self.heads]):
            logits = branch.feed([pending])[0]
        return logits.float().log_softmax(-1)
