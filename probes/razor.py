"""Head-aware KV-cache policy: RazorAttention (Tang et al. 2024, "RazorAttention: Efficient KV
Cache Compression Through Retrieval Heads"; docs/retrieval.md#razorattention).

Retrieval heads keep their whole KV cache. Every other KV head keeps the first ``n_sink``
tokens (attention sinks) and a buffer of the most recent tokens, plus one **compensation
token** that stands for everything it dropped: key k̂ = mean of the dropped keys, value v̂ =
mean of the dropped values, counted with weight n_d (the number dropped), so a query q of a
non-retrieval head computes

    o = (Σ_kept e^{s_j} v_j + n_d e^{ŝ} v̂) / (Σ_kept e^{s_j} + n_d e^{ŝ}),   ŝ = q·k̂ / √d.

**The buffer** (``buffer``), for a head holding N tokens:

* ``"ratio"`` (default; the paper's Algorithm 1): L_h = max(S0, ⌈N / C⌉) recent tokens, with
  S0 = ``window`` (the minimum buffer) and C = ``compression_ratio``: the buffer grows with the
  text at ratio C. The rounding (⌈·⌉) and the defaults S0 = 252 (with the 4 sinks, a
  256-token floor) and C = 5 are our choice.
* ``"fixed"``: L_h = ``window`` recent tokens whatever N (a StreamingLLM-style cache with
  retrieval heads exempt; C is ignored).

Sinks: 4 by default, as StreamingLLM. For a query at position t the head holds N = t
earlier tokens and keeps those at j < n_sink or j ≥ t − L_h(t); t − L_h(t) never decreases
(C ≥ 1), so a real cache that evicts as it goes never needs a dropped token back.

**Implemented by masking, not by shrinking tensors.** The cache physically keeps every entry
(``max_cache_len = None``) and a hook on each layer's ``hook_attn_scores`` rewrites the
scores of the non-retrieval query heads: the dropped keys are all given the score ŝ.
Because a score is linear in the key, ŝ = q·mean(k)/√d = mean of the dropped scores, and
softmax then gives each dropped key e^{ŝ}/Z, so the output is exactly the formula above
(Σ_dropped e^{ŝ} v_j = n_d e^{ŝ} v̂). With ``compensation=False`` the dropped scores are −inf
(plain eviction). Keys keep their original positions (RazorAttention evicts from a cache of
rotated keys; nothing is re-positioned, unlike :class:`probes.kv_policies.SinkWindow`).
Every query — prompt tokens included — sees what the policy keeps (the streaming-prefill
convention of :class:`~probes.kv_policies.SinkWindow`; the paper compresses once after a
full-attention prefill). The memory a real cache would hold is computed exactly by
:meth:`RazorAttention.kept_entries` / :meth:`RazorAttention.kv_fraction`.

GQA: a KV head is shared by ``n_heads / n_kv_heads`` query heads (query head h reads KV
head h // group, TransformerLens's ``repeat_interleave``). ``heads`` are KV heads
(``head_kind="kv"``) or query heads (``head_kind="query"``: the KV head of any retrieval
query head is kept whole, so all query heads of its group see the full context).

Importing this module registers ``"razor"`` in :data:`probes.kv_policies.KV_POLICIES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import torch

from mechscope.probes import hooknames
from mechscope.probes.errors import InputError
from mechscope.probes.kv_policies import KV_POLICIES
from mechscope.probes.serial import Data

BUFFERS = ("ratio", "fixed")


def kv_group(model) -> int:
    """How many query heads share one KV head."""
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
    return model.cfg.n_heads // n_kv


def n_kv_heads(model) -> int:
    return getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads


def as_ratio(compression_ratio) -> Fraction:
    """C as an exact fraction (a decimal C is read as written, up to 6 decimal places)."""
    return Fraction(repr(float(compression_ratio))).limit_denominator(10**6)


def buffer_length(n: int, window: int, ratio: Fraction | None = None) -> int:
    """Recent tokens a non-retrieval head keeps when it holds ``n`` tokens: ``window``
    (fixed), or max(window, ⌈n / C⌉) with ``ratio`` = C."""
    if ratio is None:
        return window
    return max(window, -((-n * ratio.denominator) // ratio.numerator))


def buffer_lengths(t: torch.Tensor, window: int, ratio: Fraction | None = None) -> torch.Tensor:
    """:func:`buffer_length` of every entry of the integer tensor ``t`` (exact integer arithmetic)."""
    if ratio is None:
        return torch.full_like(t, window)
    return ((t * ratio.denominator + ratio.numerator - 1) // ratio.numerator).clamp(min=window)


def dropped_mask(n_q: int, n_k: int, n_sink: int, window: int, device=None,
                 ratio: Fraction | None = None) -> torch.Tensor:
    """[n_q, n_k] bool: key j is dropped for the query at absolute position t = n_k − n_q + i
    when n_sink <= j < t − L(t), L(t) = :func:`buffer_length` (t, window, ratio) (the cache
    before t holds the sinks and the L(t) previous tokens; t itself is always seen)."""
    t = torch.arange(n_k - n_q, n_k, device=device)[:, None]
    j = torch.arange(n_k, device=device)[None, :]
    return (j >= n_sink) & (j < t - buffer_lengths(t, window, ratio))


def drops_any(n_k: int, n_sink: int, window: int, ratio: Fraction | None = None) -> bool:
    """Whether :func:`dropped_mask` has any True (its last query, t = n_k − 1, drops the most:
    t − L(t) never decreases)."""
    t = n_k - 1
    return n_sink < t - buffer_length(t, window, ratio)


@KV_POLICIES.register("razor")
@dataclass(frozen=True)
class RazorAttention(Data):
    """Full KV for the retrieval ``heads`` ((layer, head), …); sinks + a recent buffer (+ one
    compensation token) for every other KV head: L_h = max(S0, ⌈N / C⌉) (``buffer="ratio"``,
    the paper's) or ``window`` (``buffer="fixed"``). See the module docstring."""

    heads: tuple = ()
    n_sink: int = 4
    window: int = 252  # S0, the minimum buffer ("ratio"), or the fixed buffer ("fixed")
    compensation: bool = True
    head_kind: str = "kv"  # "kv": heads are (layer, kv_head); "query": (layer, query head)
    buffer: str = "ratio"  # "ratio": L_h = max(window, ⌈N / compression_ratio⌉); "fixed": L_h = window
    compression_ratio: float = 5.0  # C (buffer "ratio")
    prefill_chunk: int | None = None
    max_cache_len: int | None = None  # physically unbounded: eviction is by masking
    name: ClassVar[str] = "razor"

    def __post_init__(self):
        object.__setattr__(self, "heads", tuple(sorted({(int(l), int(h)) for l, h in self.heads})))
        for label, v, low in (("n_sink (S)", self.n_sink, 0), ("window (W)", self.window, 0)):
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise InputError(f"{label} must be an integer >= {low}, not {v!r}.")
        if self.head_kind not in ("kv", "query"):
            raise InputError(f"head_kind must be 'kv' or 'query', not {self.head_kind!r}.")
        if self.buffer not in BUFFERS:
            raise InputError(f"buffer must be one of {', '.join(BUFFERS)}, not {self.buffer!r}.")
        c = self.compression_ratio
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c < 1:
            raise InputError(f"compression_ratio (C) must be a number >= 1, not {c!r}.")
        object.__setattr__(self, "compression_ratio", float(c))

    @property
    def ratio(self) -> Fraction | None:
        """C as an exact fraction for ``buffer="ratio"``; None for the fixed buffer."""
        return as_ratio(self.compression_ratio) if self.buffer == "ratio" else None

    def buffer_length(self, n: int) -> int:
        """Recent tokens a non-retrieval head keeps when it holds ``n`` tokens (L_h)."""
        return buffer_length(n, self.window, self.ratio)

    # -- heads -------------------------------------------------------------------------

    def kv_heads(self, model) -> frozenset[tuple[int, int]]:
        """The retrieval KV heads (layer, kv_head) that keep their whole cache."""
        self.validate(model)
        g = kv_group(model) if self.head_kind == "query" else 1
        return frozenset((l, h // g) for l, h in self.heads)

    def validate(self, model) -> None:
        cfg = model.cfg
        limit = cfg.n_heads if self.head_kind == "query" else n_kv_heads(model)
        for l, h in self.heads:
            if not (0 <= l < cfg.n_layers and 0 <= h < limit):
                raise InputError(
                    f"Head {l}:{h} is outside the model ({cfg.n_layers} layers × {limit} "
                    f"{'query' if self.head_kind == 'query' else 'KV'} heads)."
                )
        if getattr(cfg, "attn_scores_soft_cap", -1.0) and cfg.attn_scores_soft_cap > 0:
            raise InputError("RazorAttention's compensation needs scores linear in the key: no soft-capped models.")
        if getattr(cfg, "positional_embedding_type", "") == "alibi":
            raise InputError("RazorAttention here supports rotary/absolute positions, not ALiBi.")

    def streaming_query_heads(self, model) -> dict[int, list[int]]:
        """{layer: [query heads whose KV head is NOT a retrieval head]}."""
        keep = self.kv_heads(model)
        g = kv_group(model)
        return {l: [q for q in range(model.cfg.n_heads) if (l, q // g) not in keep] for l in range(model.cfg.n_layers)}

    # -- the policy ----------------------------------------------------------------------

    def trim(self, cache) -> None:
        return None  # nothing is removed physically; see hooks()

    def hooks(self, model) -> list:
        """(hook name, fn) pairs rewriting the non-retrieval heads' attention scores."""
        out = []
        ratio = self.ratio
        for layer, qheads in self.streaming_query_heads(model).items():
            if not qheads:
                continue
            on_device = {"cpu": torch.tensor(qheads)}  # the head index, copied once per device

            def hook(scores, hook=None, on_device=on_device):
                n_q, n_k = scores.shape[-2], scores.shape[-1]
                if not drops_any(n_k, self.n_sink, self.window, ratio):  # decided without a device sync
                    return scores
                key = str(scores.device)
                if key not in on_device:
                    on_device[key] = on_device["cpu"].to(scores.device)
                idx = on_device[key]
                drop = dropped_mask(n_q, n_k, self.n_sink, self.window, scores.device, ratio)
                sub = scores[:, idx]  # [B, h, Q, K]
                if self.compensation:
                    n_d = drop.sum(-1).clamp(min=1).to(scores.dtype)  # [Q]
                    mean = torch.where(drop, sub, torch.zeros_like(sub)).sum(-1) / n_d  # [B, h, Q]
                    new = torch.where(drop, mean[..., None], sub)
                else:
                    new = sub.masked_fill(drop, float("-inf"))
                scores = scores.clone()
                scores[:, idx] = new
                return scores

            out.append((hooknames.name("attn_scores", layer), hook))
        return out

    # -- memory accounting -----------------------------------------------------------------

    def streaming_entries(self, length: int) -> int:
        """Entries one non-retrieval KV head holds after ``length`` tokens: min(length, S + L_h)
        + 1 compensation token when something was dropped (length > S + L_h)."""
        bound = self.n_sink + self.buffer_length(length)
        return min(length, bound) + (1 if self.compensation and length > bound else 0)

    def kept_entries(self, model, length: int) -> int:
        """KV entries (one key + one value of one KV head at one position, summed over
        layers) a real RazorAttention cache holds after ``length`` tokens: ``length`` for
        each retrieval KV head, :meth:`streaming_entries` for the others."""
        if length < 0:
            raise InputError("length must be >= 0.")
        full = len(self.kv_heads(model))
        rest = model.cfg.n_layers * n_kv_heads(model) - full
        return full * length + rest * self.streaming_entries(length)

    def kv_fraction(self, model, length: int) -> float:
        """Fraction of the full cache's entries kept after ``length`` tokens."""
        if length <= 0:
            raise InputError("length must be >= 1.")
        return self.kept_entries(model, length) / (model.cfg.n_layers * n_kv_heads(model) * length)

    def describe_buffer(self) -> str:
        """The buffer rule as a label, e.g. "buffer max(252, N/5)" or "fixed window 252"."""
        if self.buffer == "ratio":
            return f"buffer max({self.window}, N/{self.compression_ratio:g})"
        return f"fixed window {self.window}"

    def describe(self) -> str:
        comp = " + compensation" if self.compensation else ""
        return (f"razor: {len(self.heads)} retrieval {self.head_kind} heads full; sinks {self.n_sink} + "
                f"{self.describe_buffer()}{comp}")


def uniform_window_for(model, policy: RazorAttention, length: int) -> RazorAttention:
    """A head-agnostic sinks + fixed-window cache (no retrieval heads, no compensation, same
    sinks, same masking implementation) holding as close as possible to — never more than —
    the entries ``policy`` holds after ``length`` tokens: every KV head keeps S + W' entries."""
    n = model.cfg.n_layers * n_kv_heads(model)
    per_head = policy.kept_entries(model, length) // n
    window = max(per_head - policy.n_sink, 0)
    return RazorAttention((), n_sink=policy.n_sink, window=window, compensation=False, buffer="fixed")
