"""DoLa, decoding by contrasting layers (Chuang et al. 2023), as a registered strategy, with
the protocol of Hugging Face transformers' ``dola_layers`` generation (``_dola_decoding`` /
``_dola_select_contrast``).

Candidate premature layers (HF's "hidden_states" index l: the residual entering block l,
0 = the embeddings; N = ``n_layers``):

* ``"low"``: ``range(start, N // 2, 2)`` (``range(start, 20, 2)`` when N > 40), or
  ``[start]`` when start = N // 2;
* ``"high"``: ``range(N // 2, N, 2)`` (``range(N − 20, N, 2)`` when N > 40);
* a tuple of indices (HF keeps those < N);

with start = 0 for untied input/output embeddings, else 2 (N > 2), 1 (N = 2), 0 (N = 1) —
the early exit from tied embeddings would be the identity.

Each step: premature logits = the LM head (unembedding, **no final norm**, as HF applies
``lm_head`` to ``hidden_states[l]``) on the last position; with several candidates, the one
of largest Jensen–Shannon divergence from the final distribution (HF's form: the KL terms
averaged over the vocabulary) is chosen. Then the adaptive plausibility constraint
(``relative_top`` = 0.1): tokens with log p_final < max log p_final + log(relative_top) get
−inf; the kept ones score log p_final − log p_premature. The repetition penalty (1.2, the
value HF recommends for DoLa) then divides positive / multiplies negative scores of every
token already in the text (prompt included), as HF's ``RepetitionPenaltyLogitsProcessor``,
and greedy decoding takes the argmax.

``premature_norm=True`` (not HF's protocol) applies the final norm before the LM head on the
premature layers too (a logit-lens readout); the default is HF's raw ``lm_head``.

A candidate list holding only the final layer N has nothing to contrast (HF drops layers
≥ N and then fails); here it means no contrast: the final logits with the repetition penalty
(greedy decoding at ``repetition_penalty=1``). Importing this module registers ``"dola"``
in :data:`probes.decoding.STRATEGIES`.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from mechscope.probes import hooknames
from mechscope.probes.decoding import STRATEGIES, StepState
from mechscope.probes.errors import InputError
from mechscope.probes.readout import final_norm, unembed
from mechscope.probes.serial import Data

_HELD: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def tied_embeddings(model) -> bool:
    """Whether the model's unembedding is its embedding transposed (HF ``tie_word_embeddings``)."""
    if getattr(model.cfg, "tie_word_embeddings", False):
        return True
    # TransformerLens' config leaves the flag False for converted models: compare the weights
    return model.W_E.shape == model.W_U.T.shape and bool(torch.equal(model.W_E, model.W_U.T))


def candidate_layers(n_layers: int, layers, tied: bool) -> list[int]:
    """HF's candidate premature layers for ``dola_layers=layers`` in an N-layer model."""
    n = int(n_layers)
    start = 0 if not tied else (2 if n > 2 else 1 if n == 2 else 0)
    if layers == "low":
        if start == n // 2:
            return [start]
        return list(range(start, n // 2, 2)) if n <= 40 else list(range(start, 20, 2))
    if layers == "high":
        return list(range(n // 2, n, 2)) if n <= 40 else list(range(n - 20, n, 2))
    if isinstance(layers, str):
        raise InputError(f"DoLa layers must be 'low', 'high' or a list of layer indices, not {layers!r}.")
    out = [int(l) for l in layers]
    if not out:
        raise InputError("Give at least one DoLa candidate layer.")
    bad = [l for l in out if not 0 <= l <= n]
    if bad:
        raise InputError(f"Unknown DoLa layer(s) {bad}: indices run 0 (embeddings) .. {n} (the final layer).")
    return out


def relative_top_filter(final: torch.Tensor, premature: torch.Tensor, relative_top: float):
    """(log p_final with implausible tokens at −inf, log p_premature with them at −1e-3)."""
    f, p = final.log_softmax(-1), premature.log_softmax(-1)
    keep = f >= f.max() + math.log(relative_top)
    return f.masked_fill(~keep, float("-inf")), p.masked_fill(~keep, -1e-3)


def js_divergence(final: torch.Tensor, premature: torch.Tensor) -> torch.Tensor:
    """HF DoLa's Jensen–Shannon divergence of each premature row [k, V] from ``final`` [V]:
    0.5·(KL(m ‖ final) + KL(m ‖ premature)) with m the mean distribution, each KL's terms
    averaged (not summed) over the vocabulary."""
    m = 0.5 * (final.softmax(-1)[None] + premature.softmax(-1))
    kl1 = F.kl_div(final.log_softmax(-1)[None].expand_as(m), m, reduction="none").mean(-1)
    kl2 = F.kl_div(premature.log_softmax(-1), m, reduction="none").mean(-1)
    return 0.5 * (kl1 + kl2)


def repetition_penalty(scores: torch.Tensor, tokens, penalty: float) -> torch.Tensor:
    """HF's repetition penalty on ``scores`` [V] for each distinct token in ``tokens``."""
    if penalty == 1.0 or not len(tokens):
        return scores
    ids = torch.tensor(sorted({int(t) for t in tokens}), device=scores.device)
    s = scores[ids]
    out = scores.clone()
    out[ids] = torch.where(s < 0, s * penalty, s / penalty)
    return out


@STRATEGIES.register("dola")
@dataclass(frozen=True)
class DoLa(Data):
    """DoLa (Chuang et al. 2023) with HF's protocol: ``layers`` "high" / "low" / indices,
    dynamic premature layer by max JS divergence, relative-top filter, repetition penalty;
    ``premature_norm``: final norm on the premature layers too (not HF's)."""

    layers: str | tuple = "high"
    relative_top: float = 0.1
    repetition_penalty: float = 1.2
    premature_norm: bool = False
    name: ClassVar[str] = "dola"
    needs_model: ClassVar[bool] = True

    def __post_init__(self):
        if not isinstance(self.layers, str):
            object.__setattr__(self, "layers", tuple(int(l) for l in self.layers))
        if isinstance(self.layers, str) and self.layers not in ("low", "high"):
            raise InputError(f"DoLa layers must be 'low', 'high' or a list of layer indices, not {self.layers!r}.")
        if not self.layers:
            raise InputError("Give at least one DoLa candidate layer.")
        if not 0 < self.relative_top <= 1:
            raise InputError("DoLa's relative_top must lie in (0, 1].")
        if not self.repetition_penalty > 0:
            raise InputError("The repetition penalty must be > 0.")

    def candidates(self, model) -> list[int]:
        """The candidate premature layers (< N) for ``model``; [] when only the final layer is given."""
        n = model.cfg.n_layers
        return [l for l in candidate_layers(n, self.layers, tied_embeddings(model)) if l < n]

    def hooks(self, model):
        held = _HELD[model] = {}
        out = []
        for l in self.candidates(model):

            def keep(resid: torch.Tensor, hook, l=l) -> None:
                held[l] = resid[:, -1].detach()

            out.append((hooknames.name("resid_pre", l), keep))
        return out

    def scores(self, state: StepState) -> torch.Tensor:
        """The step's DoLa scores [d_vocab] (float32), repetition penalty applied."""
        model = state.model
        final = state.logits.float()
        layers = self.candidates(model)
        if not layers:
            return repetition_penalty(final, state.tokens, self.repetition_penalty)
        held = _HELD.get(model)
        if held is None or any(l not in held for l in layers):
            raise InputError("DoLa runs inside probes.decoding.generate (it reads the model's layers).")
        premature = torch.stack([unembed(model, final_norm(model, held[l][0]) if self.premature_norm else held[l][0])
                                 .float().to(final.device) for l in layers])
        pick = 0 if len(layers) == 1 else int(torch.argmax(js_divergence(final, premature)))
        state.scratch.setdefault("dola_layers", []).append(layers[pick])
        f, p = relative_top_filter(final, premature[pick], self.relative_top)
        return repetition_penalty(f - p, state.tokens, self.repetition_penalty)

    def select(self, state: StepState) -> int:
        return int(torch.argmax(self.scores(state)))
