"""Contrastive search (Su et al. 2022, SimCTG; REFERENCES §16) as a decoding strategy.

At each step, among the top-k candidates v of p(· | x<t):

    v* = argmax (1 − α)·p(v | x<t) − α·max_{j<t} cos(h_v, h_j)

h = last-layer hidden states (after the final norm, as Hugging Face's ``hidden_states[-1]``
that the reference uses), h_j over every earlier position (prompt included). Defaults
α = 0.6, k = 4; p is the full-vocabulary softmax (not renormalised over the k).

Cost: the k candidates are scored in ONE batched forward pass of k rows × 1 token over the
KV cache (expanded to k rows, as views), stopped before the unembedding (the score needs
only their final states); the chosen row's cache is kept and only its state is unembedded,
so the chosen token is never fed again — one forward per step, like greedy, only k rows
wide in the blocks and one row in the d_model × d_vocab unembedding. The strategy hands the
chosen row's next-token logits back through ``state.scratch`` (the ``generate`` loop uses
them instead of feeding the token). With ``kv_policy=None`` the
candidates are scored by full recomputation (the reference path the cached one is tested
against). Reducers passed to ``generate`` see the k-row candidate passes.

``Contrastive(alpha=0)`` picks the most probable candidate: greedy decoding (tested).

Importing this module registers ``"contrastive"`` in ``probes.decoding.STRATEGIES``
(``analyses.isotropy`` and the Playground widget import it; so does
``analyses.catalog.import_all``).
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass
from typing import ClassVar

import torch

from probes import hooknames
from probes.decoding import STRATEGIES, StepState
from probes.errors import InputError
from probes.kv_policies import _Data, cache_len
from probes.readout import final_norm

# per-model holder for the last layer's states seen by the strategy's hook (the model lock is
# held for the whole generation, so one holder per model is never shared by two decodings)
_HELD: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def check_alpha_k(alpha, k) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise InputError(f"Contrastive search α must lie in [0, 1], not {alpha!r}.")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"Contrastive search k must be an integer >= 1, not {k!r}.")


@STRATEGIES.register("contrastive")
@dataclass(frozen=True)
class Contrastive(_Data):
    """Contrastive search: top-k candidates, score (1 − α)·p − α·max cos with the past."""

    alpha: float = 0.6
    k: int = 4
    name: ClassVar[str] = "contrastive"
    needs_model: ClassVar[bool] = True

    def __post_init__(self):
        check_alpha_k(self.alpha, self.k)

    def hooks(self, model):
        holder: list = []
        _HELD[model] = holder

        def keep(resid: torch.Tensor, hook) -> None:
            holder.append(final_norm(model, resid).detach())

        return [(hooknames.name("resid_post", model.cfg.n_layers - 1), keep)]

    def select(self, state: StepState) -> int:
        model, scratch = state.model, state.scratch
        holder = _HELD.get(model)
        stepper = scratch.get("_stepper")
        if holder is None or stepper is None:
            raise InputError("Contrastive search runs inside probes.decoding.generate (it needs the model's states).")
        if "hist" not in scratch:  # the prompt's states, from the prefill
            hs = torch.cat([h[0] for h in holder], 0) if stepper.cache is not None else holder[-1][0]
            scratch["hist"] = hs / hs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        holder.clear()
        k = min(self.k, state.logits.numel())
        probs = state.logits.float().softmax(-1)
        top_p, top_ids = probs.topk(k)
        h = _score_candidates(model, stepper, top_ids, holder)  # [k, d] final-norm states
        hn = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        penalty = (hn @ scratch["hist"].T.to(hn.dtype)).max(dim=1).values.float()  # [k]
        score = (1 - self.alpha) * top_p - self.alpha * penalty.to(top_p.device)
        b = int(torch.argmax(score))
        tok = int(top_ids[b])
        _keep_row(stepper, b, tok)
        scratch["hist"] = torch.cat([scratch["hist"], hn[b : b + 1].to(scratch["hist"].dtype)], 0)
        # only the chosen row's next-token logits are needed: one unembedding, not k
        scratch["next_logits"] = model.unembed(h[b : b + 1][None])[0, 0]
        return tok


def _score_candidates(model, stepper, ids: torch.Tensor, holder: list) -> torch.Tensor:
    """One forward pass of the k candidates, stopped before the unembedding: their
    last-layer states after the final norm [k, d] (as the strategy's hook saw them)."""
    k = ids.numel()
    device = model.cfg.device
    cand = ids.to(device)[:, None]
    if stepper.cache is None:
        prefix = torch.tensor(stepper.all_tokens[0], device=device)[None].expand(k, -1)
        model(torch.cat([prefix, cand], 1), return_type=None)
        stepper._k_cache = None
    else:
        base = stepper.cache
        kc = copy.copy(base)
        kc.entries = []
        for e in base.entries:
            ne = copy.copy(e)
            ne.past_keys = e.past_keys.expand(k, *e.past_keys.shape[1:])
            ne.past_values = e.past_values.expand(k, *e.past_values.shape[1:])
            kc.entries.append(ne)
        kc.previous_attention_mask = base.previous_attention_mask.expand(k, -1)
        model(cand, past_kv_cache=kc, attention_mask=torch.ones_like(cand), return_type=None)
        stepper._k_cache = kc
    h = holder[-1][:, -1]
    holder.clear()
    return h


def _keep_row(stepper, b: int, tok: int) -> None:
    """Make the stepper's state what feeding ``tok`` would have made it: the chosen row's cache."""
    stepper.all_tokens[0].append(tok)
    kc = getattr(stepper, "_k_cache", None)
    if kc is not None:
        for e, ke in zip(stepper.cache.entries, kc.entries):
            e.past_keys = ke.past_keys[b : b + 1]
            e.past_values = ke.past_values[b : b + 1]
        stepper.cache.previous_attention_mask = kc.previous_attention_mask[b : b + 1]
        stepper.longest = max(stepper.longest, cache_len(stepper.cache))
        stepper.policy.trim(stepper.cache)
        stepper._k_cache = None
