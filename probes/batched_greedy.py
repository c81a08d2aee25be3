"""Greedy decoding of several prompts of different lengths as rows of one batch.

Decoding one prompt at a time is latency-bound: every step is a full pass through the
model's Python (hooks, 30 blocks) for a single token. :func:`greedy_rows` runs the same
greedy procedure as :func:`probes.decoding.generate` (``strategy="greedy"``, a full KV
cache) for many prompts at once:

* **prefill**: prompts of *equal* length are prefilled together (``prefill_rows`` at a
  time, no padding: with ``prefill_rows=1`` it is exactly the per-prompt prefill);
* **decoding**: the prefilled caches are left-padded to a common length and concatenated;
  the cache's attention mask marks the pads, which TransformerLens masks out of every
  score and skips when it assigns positions (rotary / absolute positions come from the
  cumulative sum of the mask, so every real token keeps its unpadded position);
* a row stops at EOS, at a stop token or after ``max_new_tokens``, exactly as
  ``generate`` does, and is then removed from the batch (and leading columns that only
  pads still use are dropped), so finished rows cost nothing;
* ``top1=True`` records, at every forward pass, each layer's and query head's top-1
  attended key of the row's last query (the argmax of the pattern row, first position on
  ties), reduced inside the hook on the device and returned in **unpadded** positions —
  Wu et al.'s retrieval-score input (docs/retrieval.md#retrieval-score). Pad keys get probability exactly 0
  (their scores are −inf), so they can never be the argmax of a row that attends to
  anything. One host synchronisation per step (the emitted tokens). When nothing else
  hooks the pass (no interventions, row or extra hooks) on a rotary model, that row is
  computed from the rotated last query and cached keys, so attention stays fused and no
  [rows, heads, T, T] pattern exists; otherwise it is read from ``hook_pattern``.

* ``intervention_scope="decode"``: ``interventions`` and ``row_hooks`` act on decoding
  passes only, as the retrieval-head references mask heads (Wu et al. 2024; Gema et al.
  2024): each prompt but its last token is prefilled without them, then the first decoding
  pass feeds every row's last prompt token with them (its logits give the first new token).
  ``extra_hooks`` act on every pass.

The rows' numbers are those of separate runs up to float rounding: a batched matmul may
sum in another order than a one-row one. Emitted tokens and integer top-1 positions are
equal unless two candidates tie to within that rounding (tests compare them on the real
model). Hooks given in ``extra_hooks`` / ``interventions`` must be padding-safe (keep −inf
scores, act per row); hooks that compute positions from tensor shapes (RazorAttention's)
need ``require_equal_lengths=True``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from mechscope.probes.errors import InputError
from mechscope.probes.forward import last_logits
from mechscope.probes.hooknames import name as hook_name
from mechscope.probes.interventions import Gate, HookList, Intervention, applied, check_scope, hooks_for
from mechscope.probes.kv_policies import new_cache


@dataclass(frozen=True)
class RowOutput:
    new_tokens: tuple[int, ...]
    top1: torch.Tensor | None  # [len(new_tokens), n_layers, n_heads] long, unpadded key positions


def length_batches(lengths: Sequence[int], rows: int) -> list[list[int]]:
    """Indices into ``lengths`` grouped into batches of at most ``rows``, sorted by length
    (longest first, so the largest cache is built while memory is free; ties keep input
    order) to keep padding small."""
    if rows < 1:
        raise InputError("batch_size (rows per batch) must be at least 1.")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + rows] for i in range(0, len(order), rows)]


class _Top1State:
    """Where the top-1 hooks write: ``cur[layer]`` = [rows, heads] top-1 − pad offsets.

    With ``from_qk`` the top-1 comes from the layer's rotated last query and the cache's
    rotated keys (``hook_rot_q``/``hook_rot_k``; :func:`probes.attention_reductions.pattern_stats`
    computes that one pattern row, pads masked), so attention itself stays on the fused path
    and no [rows, heads, T, T] pattern is ever made; otherwise from ``hook_pattern``."""

    def __init__(self, model, from_qk: bool):
        self.n_layers = model.cfg.n_layers
        self.model = model
        self.from_qk = from_qk
        self.pads: torch.Tensor | None = None
        self.cur: torch.Tensor | None = None
        self._q: dict[int, torch.Tensor] = {}

    def _put(self, layer: int, top: torch.Tensor) -> None:
        if self.cur is None:
            self.cur = torch.empty(self.n_layers, *top.shape, dtype=torch.long, device=top.device)
        self.cur[layer] = top - self.pads[:, None]

    def hooks(self) -> HookList:
        if not self.from_qk:
            def on_pattern(pattern, hook=None, layer=0):
                self._put(layer, pattern[:, :, -1].argmax(-1))  # [rows, heads]; ties: first position

            return [(hook_name("pattern", l), functools.partial(on_pattern, layer=l)) for l in range(self.n_layers)]
        from mechscope.probes.attention_reductions import Scoring, pattern_stats

        scoring = [Scoring.of(self.model, l) for l in range(self.n_layers)]

        def on_q(q, hook=None, layer=0):
            self._q[layer] = q[:, -1:]

        def on_k(k, hook=None, layer=0):
            keys = torch.arange(k.shape[1], device=k.device)
            real = keys[None, :] >= self.pads.to(k.device)[:, None]  # left pads lead each row
            stats = pattern_stats(self._q.pop(layer), k, scoring[layer], key_mask=real, want=("top1",))
            self._put(layer, stats.top1[:, :, 0])

        return ([(hook_name("rot_q", l), functools.partial(on_q, layer=l)) for l in range(self.n_layers)]
                + [(hook_name("rot_k", l), functools.partial(on_k, layer=l)) for l in range(self.n_layers)])

    def take(self) -> torch.Tensor:
        out, self.cur = self.cur, None
        return out


class _RowHooks:
    """Per-row hooks: ``row_hooks[r]`` (a HookList) acts on row r only. Rows that share one
    HookList object run it together on their sub-batch (one call per distinct list and
    hook point), whatever rows the current pass holds (``rows``: global row ids)."""

    def __init__(self, row_hooks: Sequence[HookList], device, gate: Gate | None = None):
        self.row_hooks = list(row_hooks)
        self.device = device
        self.gate = gate  # while it is off, no row hook runs
        self.rows: list[int] = []
        self._plan: dict[tuple, dict[str, list]] = {}

    def _groups(self, name: str) -> list:
        key = tuple(self.rows)
        if key not in self._plan:
            plan: dict[str, list] = {}
            by_list: dict[int, list[int]] = {}
            for pos, r in enumerate(self.rows):
                by_list.setdefault(id(self.row_hooks[r]), []).append(pos)
            for positions in by_list.values():
                where = torch.tensor(positions, device=self.device)  # once per pass, not per hook call
                fns: dict[str, list] = {}
                for hname, fn in self.row_hooks[self.rows[positions[0]]]:
                    fns.setdefault(hname, []).append(fn)
                for hname, chain in fns.items():
                    plan.setdefault(hname, []).append((where, chain))
            self._plan = {key: plan}  # only the current pass's plan is kept
        return self._plan[key].get(name, [])

    def hooks(self) -> HookList:
        names = sorted({n for hl in self.row_hooks for n, _ in hl})

        def dispatch(tensor, hook=None, name=""):
            if self.gate is not None and not self.gate.on:
                return None
            # A row group's hooks at one point run in order on its sub-batch, each on the
            # previous one's output (several head masks of one layer all apply), and the
            # result is written back (a hook may also edit its input in place).
            out = tensor
            for idx, chain in self._groups(name):
                sub = tensor.index_select(0, idx)
                for fn in chain:
                    new = fn(sub, hook)
                    if new is not None:
                        sub = new
                out = out.clone() if out is tensor else out
                out.index_copy_(0, idx, sub.to(out.dtype))
            return out

        return [(n, functools.partial(dispatch, name=n)) for n in names]


def _merge_left_padded(model, caches: list, lengths: list[int]):
    """One cache for all rows: each prefilled cache left-padded (zeros, mask 0) to the longest."""
    longest = max(lengths)
    merged = new_cache(model, sum(c.previous_attention_mask.shape[0] for c in caches))
    for layer, entry in enumerate(merged.entries):
        keys, values = [], []
        for c in caches:
            k, v = c.entries[layer].past_keys, c.entries[layer].past_values
            pad = longest - k.shape[1]
            if pad:
                k = torch.cat([k.new_zeros(k.shape[0], pad, *k.shape[2:]), k], 1)
                v = torch.cat([v.new_zeros(v.shape[0], pad, *v.shape[2:]), v], 1)
            keys.append(k)
            values.append(v)
        entry.past_keys = torch.cat(keys, 0) if len(keys) > 1 else keys[0]
        entry.past_values = torch.cat(values, 0) if len(values) > 1 else values[0]
    masks = []
    for c in caches:
        m = c.previous_attention_mask.long()
        pad = longest - m.shape[1]
        masks.append(torch.cat([m.new_zeros(m.shape[0], pad), m], 1) if pad else m)
    merged.previous_attention_mask = torch.cat(masks, 0)
    return merged


def _select_rows(cache, keep: torch.Tensor, drop_cols: int) -> None:
    """Keep batch rows ``keep`` and drop the first ``drop_cols`` (pad-only) columns."""
    for entry in cache.entries:
        idx = keep.to(entry.past_keys.device)
        entry.past_keys = entry.past_keys.index_select(0, idx)[:, drop_cols:]
        entry.past_values = entry.past_values.index_select(0, idx)[:, drop_cols:]
    mask = cache.previous_attention_mask
    cache.previous_attention_mask = mask.index_select(0, keep.to(mask.device))[:, drop_cols:]


def greedy_rows(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    stop_tokens: Sequence[int] = (),
    stop_at_eos: bool = True,
    interventions: Sequence[Intervention] = (),
    extra_hooks: HookList = (),
    top1: bool = False,
    prefill_rows: int = 1,
    require_equal_lengths: bool = False,
    row_hooks: Sequence[HookList] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    intervention_scope: str = "prompt_and_decode",
) -> list[RowOutput]:
    """Greedy continuations of ``prompts`` (token-id lists), all rows of one decoding batch;
    see the module docstring. ``row_hooks[r]``: hooks applied to row r only (rows sharing
    one list object run it together; e.g. one KV policy per row). ``on_step(step,
    rows_alive)`` is called after each pass. ``intervention_scope``: where
    ``interventions`` and ``row_hooks`` act (``"prompt_and_decode"`` or ``"decode"``)."""
    prompts = [[int(t) for t in p] for p in prompts]
    if not prompts:
        return []
    if max_new_tokens < 1:
        raise InputError("max_new_tokens must be at least 1.")
    if prefill_rows < 1:
        raise InputError("prefill_rows must be at least 1.")
    if any(not p for p in prompts):
        raise InputError("Empty prompt.")
    lengths = [len(p) for p in prompts]
    if require_equal_lengths and len(set(lengths)) > 1:
        raise InputError("These hooks need rows of equal length (no padding).")
    if max(lengths) + max_new_tokens > model.cfg.n_ctx:
        raise InputError(f"Prompt ({max(lengths)}) + max_new_tokens ({max_new_tokens}) exceeds n_ctx ({model.cfg.n_ctx}).")
    for p in prompts:
        if min(p) < 0 or max(p) >= model.cfg.d_vocab:
            raise InputError(f"Token ids must lie in 0..{model.cfg.d_vocab - 1}.")
    device = model.cfg.device
    eos = getattr(model.tokenizer, "eos_token_id", None) if model.tokenizer is not None else None
    stops = frozenset(int(t) for t in stop_tokens) | (frozenset([eos]) if stop_at_eos and eos is not None else frozenset())
    iv_hooks = hooks_for(model, interventions)
    # nothing else hooks the pass: the top-1 can come from q and k (attention stays fused)
    qk = model.cfg.positional_embedding_type == "rotary" and not (iv_hooks or extra_hooks or row_hooks)
    state = _Top1State(model, from_qk=qk)
    split = check_scope(intervention_scope) == "decode" and (bool(iv_hooks) or any(row_hooks or ()))
    gate = Gate(on=not split)  # decode scope: off while the prompts' prefixes are prefilled
    per_row = None
    if row_hooks is not None:
        if len(row_hooks) != len(prompts):
            raise InputError(f"{len(row_hooks)} row hook lists for {len(prompts)} prompts.")
        per_row = _RowHooks(row_hooks, model.cfg.device, gate if split else None)
    hooks = ((gate.wrap(iv_hooks) if split else iv_hooks) + list(extra_hooks)
             + (per_row.hooks() if per_row is not None else []) + (state.hooks() if top1 else []))
    n = len(prompts)
    # prefill groups: consecutive runs of equal length (rows keep their input order)
    groups: list[list[int]] = []
    for i in range(n):
        if groups and lengths[groups[-1][0]] == lengths[i] and len(groups[-1]) < prefill_rows:
            groups[-1].append(i)
        else:
            groups.append([i])
    out: list[list[int]] = [[] for _ in range(n)]
    passes: list[tuple[list[int], torch.Tensor]] = []  # (rows alive, [L, rows, H] top-1) per pass
    fed = [L - 1 for L in lengths] if split else lengths  # decode scope: the last prompt token comes later
    # no_grad, not inference_mode: whatever the pass builds and keeps on the model (e.g.
    # TransformerLens' rotary sin/cos tables, extended for a longer context) must stay a
    # normal tensor, or a later gradient-based analysis on the same model fails.
    with applied(model, (), extra_hooks=hooks), torch.no_grad():
        caches, logits, tops, order = [], [], [], []
        for g in groups:
            cache = new_cache(model, len(g))
            state.pads = torch.zeros(len(g), dtype=torch.long, device=device)
            if per_row is not None:
                per_row.rows = list(g)
            if fed[g[0]]:
                piece = torch.tensor([prompts[i][: fed[i]] for i in g], device=device)
                logits.append(last_logits(model, piece, past_kv_cache=cache, attention_mask=torch.ones_like(piece)))
                if top1:
                    tops.append(state.take())
            caches.append(cache)
            order += g
        if order != list(range(n)):
            raise RuntimeError("prefill groups must keep the row order")
        cache = caches[0] if len(caches) == 1 else _merge_left_padded(model, caches, [fed[g[0]] for g in groups])
        del caches
        longest = max(lengths)
        pads = torch.tensor([longest - L for L in lengths], dtype=torch.long, device=device)
        alive = list(range(n))
        if split:  # the first decoding pass: every row's last prompt token, interventions on
            gate.on = True
            state.pads = pads
            if per_row is not None:
                per_row.rows = alive
            piece = torch.tensor([[p[-1]] for p in prompts], device=device)
            logits = last_logits(model, piece, past_kv_cache=cache, attention_mask=torch.ones_like(piece))
            pending_top = state.take() if top1 else None
        else:
            logits = torch.cat(logits, 0)
            pending_top = torch.cat(tops, 1) if top1 else None
        step = 0
        while True:
            toks = logits.float().argmax(-1)  # greedy, as probes.decoding.Greedy (ties: first id)
            emitted = toks.tolist()  # the one host sync of the step
            if top1:
                passes.append((list(alive), pending_top))
            keep = []
            for i, r in enumerate(alive):
                out[r].append(emitted[i])
                if emitted[i] not in stops and len(out[r]) < max_new_tokens:
                    keep.append(i)
            step += 1
            if on_step is not None:
                on_step(step, len(keep))
            if not keep:
                break
            if len(keep) < len(alive):
                idx = torch.tensor(keep, device=device)
                pads = pads.index_select(0, idx)
                drop = int(pads.min())
                _select_rows(cache, idx, drop)
                pads = pads - drop
                toks = toks.index_select(0, idx)
                alive = [alive[i] for i in keep]
            state.pads = pads
            if per_row is not None:
                per_row.rows = alive
            piece = toks[:, None]
            logits = last_logits(model, piece, past_kv_cache=cache, attention_mask=torch.ones_like(piece))
            if top1:
                pending_top = state.take()
        del cache
    tops_by_row: list[list[torch.Tensor]] = [[] for _ in range(n)]
    for rows, t in passes:
        t = t.cpu()
        for j, r in enumerate(rows):
            tops_by_row[r].append(t[:, j])
    return [RowOutput(tuple(out[r]), torch.stack(tops_by_row[r]) if top1 else None) for r in range(n)]
