"""Contrastive search (Su et al. 2022, SimCTG; docs/isotropy.md#contrastive-search) as a decoding strategy.

At each step, among the top-k candidates v of p(· | x<t):

    v* = argmax (1 − α)·p(v | x<t) − α·max_{j<t} cos(h_v, h_j)

h = last-layer hidden states (after the final norm, as Hugging Face's ``hidden_states[-1]``
that the reference uses), h_j over every earlier position (prompt included). Defaults
α = 0.6, k = 4; p is the full-vocabulary softmax (not renormalised over the k).

Cost: one forward per step, like greedy. The k candidates' final states come from ONE pass
stopped before the unembedding; only the chosen candidate is unembedded (its logits are the
next step's, handed back through ``state.scratch``, so the chosen token is never fed again).
Two ways to run that pass over the KV cache:

* **shared row** (rotary models on the CPU, wherever it is exact): the k candidates are k
  query positions of ONE row over the ONE cache. Hooks make that equal to k separate
  continuations: every candidate is rotated to the same position t (RoPE is a rotation, so
  the candidate at slot t + j is rotated back by j after TransformerLens rotates it, queries
  and keys alike), and candidate-to-candidate attention is masked, so each candidate sees
  the cache and itself only. Afterwards the cache keeps the chosen candidate's keys/values
  at slot t. The cache is read once, not once per candidate.
* **k rows**: the cache expanded to k rows (views) and each candidate fed as one token of
  its row. Used on GPUs (faster there: a step is bound by kernel launches, and the shared
  row's hooks add some; :data:`SHARED_ROW_DEVICES`) and wherever the shared row would not be
  exact: models without RoPE or with local
  (sliding-window) or log-n attention, KV policies that mask by hooks (RazorAttention),
  interventions that depend on the position (``probes.interventions.positionwise``), or a
  pass that would run past ``n_ctx``.

With ``kv_policy=None`` the candidates are scored by full recomputation (the reference path
the cached ones are tested against). Reducers passed to ``generate`` see the candidate pass
(one row of k positions, or k rows of one).

``Contrastive(alpha=0)`` picks the most probable candidate: greedy decoding (tested).

Importing this module registers ``"contrastive"`` in ``probes.decoding.STRATEGIES``
(``analyses.isotropy`` and the Playground widget import it; so does
``analyses.catalog.import_all``).
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from mechscope.probes import hooknames
from mechscope.probes.decoding import STRATEGIES, StepState
from mechscope.probes.errors import InputError
from mechscope.probes.interventions import positionwise
from mechscope.probes.kv_policies import cache_len
from mechscope.probes.serial import Data
from mechscope.probes.readout import final_norm


@dataclass
class _Held:
    """Per-model state shared by the strategy's hooks and ``select`` (the model lock is held
    for the whole generation, so one holder per model is never shared by two decodings)."""

    states: list = field(default_factory=list)  # final-norm last-layer states of each pass
    shared: tuple | None = None  # (k, mask [k, k]) while a shared-row candidate pass runs


_HELD: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def check_alpha_k(alpha, k) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise InputError(f"Contrastive search α must lie in [0, 1], not {alpha!r}.")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"Contrastive search k must be an integer >= 1, not {k!r}.")


# Device types on which the shared row is used where it is exact: on the CPU a step costs its
# cache reads, which the shared row saves; on a GPU it costs kernel launches, which the shared
# row's hooks add (timings: benchmarks/RESULTS.md, "Contrastive search vs greedy").
SHARED_ROW_DEVICES = ("cpu",)


def _may_share(model) -> bool:
    """RoPE without local or log-n attention, on a device of :data:`SHARED_ROW_DEVICES`."""
    cfg = model.cfg
    return (cfg.positional_embedding_type == "rotary" and not getattr(cfg, "use_local_attn", False)
            and not getattr(cfg, "use_logn_attn", False)
            and torch.device(cfg.device).type in SHARED_ROW_DEVICES)


@STRATEGIES.register("contrastive")
@dataclass(frozen=True)
class Contrastive(Data):
    """Contrastive search: top-k candidates, score (1 − α)·p − α·max cos with the past."""

    alpha: float = 0.6
    k: int = 4
    name: ClassVar[str] = "contrastive"
    needs_model: ClassVar[bool] = True

    def __post_init__(self):
        check_alpha_k(self.alpha, self.k)

    def hooks(self, model):
        held = _HELD[model] = _Held()

        def keep(resid: torch.Tensor, hook) -> None:
            held.states.append(final_norm(model, resid).detach())

        out = [(hooknames.name("resid_post", model.cfg.n_layers - 1), keep)]
        return out + (_shared_row_hooks(model, held) if _may_share(model) else [])

    def select(self, state: StepState) -> int:
        model, scratch = state.model, state.scratch
        held = _HELD.get(model)
        stepper = scratch.get("_stepper")
        if held is None or stepper is None:
            raise InputError("Contrastive search runs inside probes.decoding.generate (it needs the model's states).")
        if "hist" not in scratch:  # the prompt's states, from the prefill
            hs = torch.cat([h[0] for h in held.states], 0) if stepper.cache is not None else held.states[-1][0]
            scratch["hist"] = hs / hs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        held.states.clear()
        k = min(self.k, state.logits.numel())
        probs = state.logits.float().softmax(-1)
        top_p, top_ids = probs.topk(k)
        shared = shares_one_row(model, stepper, k, state.interventions)
        h = (_score_shared(model, stepper, top_ids, held) if shared
             else _score_rows(model, stepper, top_ids, held))  # [k, d] final-norm states
        hn = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        penalty = (hn @ scratch["hist"].T.to(hn.dtype)).max(dim=1).values.float()  # [k]
        score = (1 - self.alpha) * top_p - self.alpha * penalty.to(top_p.device)
        b = int(torch.argmax(score))
        tok = int(top_ids[b])
        (_keep_shared if shared else _keep_row)(stepper, b, tok)
        scratch["hist"] = torch.cat([scratch["hist"], hn[b : b + 1].to(scratch["hist"].dtype)], 0)
        # only the chosen candidate's next-token logits are needed: one unembedding, not k
        scratch["next_logits"] = model.unembed(h[b : b + 1][None])[0, 0]
        return tok


def shares_one_row(model, stepper, k: int, interventions=()) -> bool:
    """Whether the k candidates are scored as one row over the shared cache: where that is
    exact, on the devices of :data:`SHARED_ROW_DEVICES`."""
    return (stepper.cache is not None and _may_share(model) and not hasattr(stepper.policy, "hooks")
            and all(positionwise(iv) for iv in interventions)
            and cache_len(stepper.cache) + k <= model.cfg.n_ctx)


def _shared_row_hooks(model, held: _Held) -> list:
    """Hooks that are inert except during a shared-row candidate pass (``held.shared`` set)."""
    out = []
    for layer in range(model.cfg.n_layers):
        attn = model.blocks[layer].attn

        def back_to_t(x: torch.Tensor, hook, attn=attn):
            # x: the output of TransformerLens's RoPE [batch, pos, heads, d_head], a fresh
            # tensor; its last k positions hold the candidates at slots t..t+k-1. Rotating
            # slot t + j back by j puts every candidate at position t: R(−j)·R(t + j) = R(t).
            if held.shared is None:
                return None
            k, rd = held.shared[0], attn.cfg.rotary_dim
            cos = attn.rotary_cos[:k, None, :].to(x.dtype)
            sin = attn.rotary_sin[:k, None, :].to(x.dtype)
            tail = x[:, -k:, :, :rd]
            x[:, -k:, :, :rd] = tail * cos - attn.rotate_every_two(tail) * sin
            return x

        def alone(scores: torch.Tensor, hook):
            # [batch, heads, k queries, keys]: each candidate sees the cache and itself only
            if held.shared is None:
                return None
            k, mask = held.shared
            scores[..., -k:] += mask.to(scores.device, scores.dtype)  # no copy: made on the device
            return scores

        out += [(hooknames.name("rot_q", layer), back_to_t), (hooknames.name("rot_k", layer), back_to_t),
                (hooknames.name("attn_scores", layer), alone)]
    return out


def _score_shared(model, stepper, ids: torch.Tensor, held: _Held) -> torch.Tensor:
    """The k candidates as k positions of one row over the shared cache (see the module
    docstring); their final-norm last-layer states [k, d]."""
    from mechscope.probes.capture import Batch

    k = ids.numel()
    cand = ids.to(model.cfg.device)[None]  # [1, k]
    mask = torch.full((k, k), float("-inf"), device=model.cfg.device).fill_diagonal_(0.0)
    stepper.batch = Batch(cand, torch.tensor([k]), [0], q_offset=cache_len(stepper.cache), step=stepper.step)
    held.shared = (k, mask)
    try:
        model(cand, past_kv_cache=stepper.cache, attention_mask=torch.ones_like(cand), return_type=None)
    finally:
        held.shared = None
    h = held.states[-1][0]
    held.states.clear()
    return h


def _keep_shared(stepper, b: int, tok: int) -> None:
    """The cache as feeding ``tok`` would have left it: the chosen candidate's keys/values
    (position-free: TransformerLens caches keys before RoPE) moved to slot t, the rest cut."""
    stepper.all_tokens[0].append(tok)
    cache = stepper.cache
    t = stepper.batch.q_offset  # the cache's length before the candidate pass
    for e in cache.entries:
        if b:
            e.past_keys[:, t] = e.past_keys[:, t + b]
            e.past_values[:, t] = e.past_values[:, t + b]
        e.past_keys, e.past_values = e.past_keys[:, : t + 1], e.past_values[:, : t + 1]
    cache.previous_attention_mask = cache.previous_attention_mask[:, : t + 1]
    stepper.longest = max(stepper.longest, t + 1)
    stepper.policy.trim(cache)


def _score_rows(model, stepper, ids: torch.Tensor, held: _Held) -> torch.Tensor:
    """One forward pass of the k candidates as k rows (the cache expanded to k rows, as
    views; or full recomputation without a cache): their final-norm states [k, d]."""
    from mechscope.probes.capture import Batch

    k = ids.numel()
    device = model.cfg.device
    cand = ids.to(device)[:, None]
    if stepper.cache is None:
        prefix = torch.tensor(stepper.all_tokens[0], device=device)[None].expand(k, -1)
        stepper.batch = Batch(torch.cat([prefix, cand], 1), torch.full((k,), prefix.shape[1] + 1), [0] * k,
                              step=stepper.step)
        model(stepper.batch.tokens, return_type=None)
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
        stepper.batch = Batch(cand, torch.ones(k, dtype=torch.long), [0] * k, q_offset=cache_len(base),
                              step=stepper.step)
        model(cand, past_kv_cache=kc, attention_mask=torch.ones_like(cand), return_type=None)
        stepper._k_cache = kc
    h = held.states[-1][:, -1]
    held.states.clear()
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
