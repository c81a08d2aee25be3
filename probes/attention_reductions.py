"""Reductions of the attention pattern computed from q and k, without the T×T pattern.

The analyses read a few reductions of each layer's post-softmax pattern A [batch, head,
query, key]: per-key column sums and the number of queries that see each key (Gu et al.
2024's α_k and ACT's sink criterion, Yu et al. 2024 — docs/sinks.md#sink-metric,
docs/sinks.md#hidden-sinks), each query's top-1 key (Wu et al. 2024's retrieval score,
docs/retrieval.md#retrieval-score) and the mass on the first token (Guo et al. 2024's
dormancy, docs/sinks.md#active-and-dormant-heads). :func:`pattern_stats` computes them from the layer's rotated
queries and keys **blockwise over queries**: a block of ``block`` queries holds whole rows
of scores, so its softmax uses each row's own maximum and normaliser (the softmax's row
statistics) and its rows *are* the materialised pattern's rows; each block is reduced and
dropped. Memory is O(batch·heads·block·keys) — never heads × T × T.

Scores follow TransformerLens' ``AbstractAttention`` exactly: q·kᵀ / ``attn_scale``,
soft-capped if the model caps them, −inf outside the causal mask (key j visible from
query i iff j ≤ i, and j > i − window on local layers) and on masked (padding) keys,
softmax, rows with no visible key set to 0. Grouped-query heads: query head h reads KV
head h // (heads / kv_heads), as ``repeat_interleave`` does. Results equal the reductions
of the materialised ``hook_pattern`` up to float rounding of the q·k products (tests
compare both on hand-built and on real attention); ``top1`` takes the first position on
ties, as ``torch.argmax`` on the pattern does.

**Using it during a forward pass.** Hooks on ``hook_pattern`` force the materialised
attention path (:mod:`probes.fused_attention`). A reducer that only needs these
reductions reads q and k instead: :class:`QKReducer` turns ``fn(layer, q, k, batch)`` into
``{hook name: reducer}`` for :func:`probes.capture.run` and
:func:`probes.decoding.generate` (``reducers=``), on each layer's ``hook_rot_q`` and
``hook_rot_k`` (which hold the *whole cache's* keys under a KV cache) — hooks that leave
the fused path on. For example, the sink metric's α per layer and head::

    alpha = {}
    def on_qk(layer, q, k, batch):
        s = pattern_stats(q, k, Scoring.of(model, layer), lengths=batch.lengths, want=("colsum",))
        alpha[layer] = s.column_mean()          # [B, H, T] == probes.act.column_mean(pattern, 0, lengths)
    capture.run(model, seqs, reducers=QKReducer(model, on_qk).reducers())

and the retrieval score's top-1 of the last query at every decoding step::

    def on_qk(layer, q, k, batch):
        top[layer] = pattern_stats(q[:, -1:], k, Scoring.of(model, layer), want=("top1",)).top1[0, :, 0]

(``q_offset`` defaults to keys − queries, TransformerLens' cache alignment, which also
holds for a slice of the last queries.) Models without rotary embeddings expose keys only
at ``hook_k``, without the cached part: there the reducer is correct only without a KV
cache, and :class:`QKReducer` refuses them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from mechscope.probes.errors import InputError
from mechscope.probes.fused_attention import AttentionMemoryError
from mechscope.probes.hooknames import name as hook_name

STATS = ("colsum", "top1", "first")


@dataclass(frozen=True)
class Scoring:
    """How one layer turns q·k into scores: divided by ``scale`` (TransformerLens'
    ``attn_scale``), soft-capped at ``softcap`` (None: no cap), and restricted to a causal
    ``window`` of keys on local layers (None: global)."""

    scale: float
    window: int | None = None
    softcap: float | None = None

    @classmethod
    def of(cls, model, layer: int) -> "Scoring":
        from transformer_lens.utilities.activation_functions import softcap_enabled

        attn = model.blocks[layer].attn
        cfg = attn.cfg
        window = cfg.window_size if attn.attn_type == "local" else None
        cap = cfg.attn_scores_soft_cap if softcap_enabled(cfg.attn_scores_soft_cap) else None
        return cls(float(attn.attn_scale), window, cap)


@dataclass(frozen=True)
class PatternStats:
    """Reductions of a pattern A [batch, head, query, key] (None where not asked for).

    ``colsum`` [B, H, K]: Σ_i A[i, j] over the real queries; ``count`` [B, K]: how many real
    queries are at or after key j (Gu et al.'s T − k + 1: causal only — a local window or a
    key mask zeroes A, not the count — as :func:`probes.act.column_mean`); ``top1`` [B, H, Q]: the
    key with the largest A[i, ·] (first on ties; −1 on rows that see no key); ``first``
    [B, H, Q]: A[i, 0], the mass on the first key."""

    colsum: torch.Tensor | None = None
    count: torch.Tensor | None = None
    top1: torch.Tensor | None = None
    first: torch.Tensor | None = None

    def column_mean(self) -> torch.Tensor:
        """[B, H, K] mean attention each key receives from the queries that see it (0 where
        none does) — :func:`probes.act.column_mean` of the pattern."""
        if self.colsum is None:
            raise InputError("column_mean needs the 'colsum' statistic.")
        return self.colsum / self.count.to(self.colsum.dtype).clamp(min=1)[:, None, :]


def _check(q: torch.Tensor, k: torch.Tensor) -> tuple[int, int]:
    if q.ndim != 4 or k.ndim != 4:
        raise InputError("q and k must be [batch, pos, head, d_head] (TransformerLens' hook_q/hook_k layout).")
    if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise InputError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or d_head.")
    heads, kv_heads = q.shape[2], k.shape[2]
    if heads % kv_heads:
        raise InputError(f"{heads} query heads cannot share {kv_heads} key heads.")
    return heads, kv_heads


def pattern_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    scoring: Scoring,
    *,
    q_offset: int | None = None,
    key_mask: torch.Tensor | None = None,
    block: int = 256,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """The pattern ``block`` queries at a time: yields ``(start, pattern, visible)`` with
    pattern [B, H, b, K] (rows ``start..start+b`` of the full pattern) and visible [B, 1, b, K]
    (bool). ``q`` [B, Q, H, d] and ``k`` [B, K, H_kv, d] are post-rotary (``hook_rot_q``,
    ``hook_rot_k``); query i sits at absolute position ``q_offset + i`` (default K − Q, the
    KV-cache alignment); ``key_mask`` [B, K] marks real keys (False: padding)."""
    heads, kv_heads = _check(q, k)
    if not isinstance(block, int) or block < 1:
        raise InputError(f"block must be a positive number of queries, not {block!r}.")
    n_b, n_q, _, d = q.shape
    n_k = k.shape[1]
    offset = n_k - n_q if q_offset is None else int(q_offset)
    rep = heads // kv_heads
    kt = k.permute(0, 2, 3, 1)  # [B, G, d, K]
    kpos = torch.arange(n_k, device=k.device)
    keys_ok = None if key_mask is None else key_mask.to(device=k.device, dtype=torch.bool)[:, None, None, :]
    for start in range(0, n_q, block):
        stop = min(start + block, n_q)
        b = stop - start
        # [B, b, H, d] → [B, G, rep·b, d]: query head h = g·rep + r reads KV head g
        qb = q[:, start:stop].permute(0, 2, 1, 3).reshape(n_b, kv_heads, rep * b, d)
        scores = (qb @ kt).reshape(n_b, heads, b, n_k) / scoring.scale
        if scoring.softcap is not None:
            scores = scoring.softcap * torch.tanh(scores / scoring.softcap)
        qpos = torch.arange(offset + start, offset + stop, device=k.device)[:, None]
        visible = kpos[None, :] <= qpos
        if scoring.window is not None:
            visible = visible & (kpos[None, :] > qpos - scoring.window)
        visible = visible[None, None]  # [1, 1, b, K]
        if keys_ok is not None:
            visible = visible & keys_ok
        scores = torch.where(visible, scores, torch.tensor(-math.inf, dtype=scores.dtype, device=scores.device))
        pattern = torch.softmax(scores, dim=-1)
        pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern)
        yield start, pattern, visible


def pattern_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    scoring: Scoring,
    *,
    q_offset: int | None = None,
    lengths: torch.Tensor | None = None,
    key_mask: torch.Tensor | None = None,
    block: int = 256,
    want: Sequence[str] = STATS,
) -> PatternStats:
    """The reductions named in ``want`` (``"colsum"`` — with ``count`` —, ``"top1"``,
    ``"first"``) of the pattern of ``q`` and ``k`` (see :func:`pattern_blocks`), one query
    block at a time. ``lengths`` [B] (right padding): queries at absolute positions
    ≥ ``lengths[b]`` are left out of ``colsum`` and ``count``. A ``torch.OutOfMemoryError``
    becomes an :class:`~probes.fused_attention.AttentionMemoryError` that asks for a
    smaller ``block``."""
    unknown = set(want) - set(STATS)
    if unknown:
        raise InputError(f"Unknown statistic {sorted(unknown)[0]!r}: choose from {', '.join(STATS)}.")
    heads, _ = _check(q, k)
    n_b, n_q = q.shape[0], q.shape[1]
    n_k = k.shape[1]
    offset = n_k - n_q if q_offset is None else int(q_offset)
    dtype = torch.promote_types(q.dtype, k.dtype)
    kpos = torch.arange(n_k, device=q.device)
    colsum = torch.zeros(n_b, heads, n_k, dtype=dtype, device=q.device) if "colsum" in want else None
    count = torch.zeros(n_b, n_k, dtype=torch.long, device=q.device) if "colsum" in want else None
    top1 = torch.empty(n_b, heads, n_q, dtype=torch.long, device=q.device) if "top1" in want else None
    first = torch.empty(n_b, heads, n_q, dtype=dtype, device=q.device) if "first" in want else None
    try:
        for start, pattern, visible in pattern_blocks(q, k, scoring, q_offset=offset, key_mask=key_mask, block=block):
            stop = start + pattern.shape[2]
            if colsum is not None:
                qpos = torch.arange(offset + start, offset + stop, device=q.device)
                after = (kpos[None, :] <= qpos[:, None])[None]  # [1, b, K]: causal, no window or key mask
                if lengths is not None:
                    after = after & (qpos[None, :] < lengths.to(q.device)[:, None])[:, :, None]  # [B, b, K]
                rows = after[:, None]  # [B or 1, 1, b, K]
                colsum += (pattern * rows).sum(-2)
                count += after.sum(-2).expand(n_b, -1)
            if top1 is not None:
                best = pattern.argmax(-1)
                top1[:, :, start:stop] = torch.where(visible.any(-1), best, torch.full_like(best, -1))
            if first is not None:
                first[:, :, start:stop] = pattern[..., 0]
    except torch.OutOfMemoryError:
        raise AttentionMemoryError(
            f"Out of device memory reducing attention ({n_b} row(s) × {heads} heads × {block} queries × {n_k} keys "
            f"per block): lower block (now {block})."
        ) from None
    return PatternStats(colsum, count, top1, first)


class QKReducer:
    """Per-layer reducers on ``hook_rot_q``/``hook_rot_k`` that hand ``fn(layer, q, k,
    batch)`` each pass's rotated queries and the whole cache's rotated keys, for
    :func:`probes.capture.run` and :func:`probes.decoding.generate` (``reducers=``). They
    leave the fused attention path on (see the module doc for an example)."""

    def __init__(self, model, fn: Callable, layers: Sequence[int] | None = None):
        if model.cfg.positional_embedding_type != "rotary":
            raise InputError("QKReducer needs a rotary model (hook_rot_k holds the cached keys; hook_k does not).")
        self.fn = fn
        self.layers = list(range(model.cfg.n_layers)) if layers is None else [int(x) for x in layers]
        for layer in self.layers:
            if not 0 <= layer < model.cfg.n_layers:
                raise InputError(f"layer {layer} is out of range: this model has {model.cfg.n_layers}.")
        self._q: dict[int, torch.Tensor] = {}

    def _on_q(self, tensor, site, batch) -> None:
        self._q[site.layer] = tensor

    def _on_k(self, tensor, site, batch) -> None:
        q = self._q.pop(site.layer)
        self.fn(site.layer, q, tensor, batch)

    def reducers(self) -> dict:
        out = {}
        for layer in self.layers:
            out[hook_name("rot_q", layer)] = self._on_q
            out[hook_name("rot_k", layer)] = self._on_k
        return out


def column_mean_reducers(model, fn: Callable, layers: Sequence[int] | None = None, block: int = 256) -> dict:
    """``{hook name: reducer}`` for :func:`probes.capture.run` that call ``fn(layer, alpha,
    batch)`` with each layer's column mean of the attention pattern over the real queries,
    ``alpha`` [B, H, K] = :func:`probes.act.column_mean` ``(pattern, 0, batch.lengths)`` —
    Gu et al.'s α_k and ACT's sink criterion. On rotary models it comes from q and k,
    blockwise (:class:`QKReducer`, :func:`pattern_stats`), so attention stays on the fused path
    and no layer holds [B, H, T, T]; otherwise from ``hook_pattern``."""
    from mechscope.probes.act import column_mean

    layers = list(range(model.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    if model.cfg.positional_embedding_type != "rotary":
        def on_pattern(pattern, site, batch):
            fn(site.layer, column_mean(pattern, 0, batch.lengths), batch)

        return {hook_name("pattern", layer): on_pattern for layer in layers}
    scoring = {layer: Scoring.of(model, layer) for layer in layers}

    def on_qk(layer, q, k, batch):
        stats = pattern_stats(q, k, scoring[layer], lengths=batch.lengths, block=block, want=("colsum",))
        fn(layer, stats.column_mean(), batch)

    return QKReducer(model, on_qk, layers).reducers()
