"""Head-aware KV-cache policy: RazorAttention (Tang et al. 2024; REFERENCES §8).

Retrieval heads keep their whole KV cache; every other KV head keeps only the first
``n_sink`` tokens (attention sinks) and the ``window`` most recent ones, plus one
**compensation token** that stands for everything it dropped: key k̂ = mean of the dropped
keys, value v̂ = mean of the dropped values, counted with weight n_d (the number dropped),
so a query q of a non-retrieval head computes

    o = (Σ_kept e^{s_j} v_j + n_d e^{ŝ} v̂) / (Σ_kept e^{s_j} + n_d e^{ŝ}),   ŝ = q·k̂ / √d.

**Implemented by masking, not by shrinking tensors.** The cache physically keeps every entry
(``max_cache_len = None``) and a hook on each layer's ``hook_attn_scores`` rewrites the
scores of the non-retrieval query heads: the dropped keys (sinks excluded, older than the
window) are all given the score ŝ. Because a score is linear in the key, ŝ = q·mean(k)/√d
= mean of the dropped scores, and softmax then gives each dropped key e^{ŝ}/Z, so the
output is exactly the formula above (Σ_dropped e^{ŝ} v_j = n_d e^{ŝ} v̂). With
``compensation=False`` the dropped scores are −inf (plain eviction). Keys keep their
original positions (RazorAttention evicts from a cache of rotated keys; nothing is
re-positioned, unlike :class:`probes.kv_policies.SinkWindow`). Every query — prompt
tokens included — sees what the policy keeps (the streaming-prefill convention of
:class:`~probes.kv_policies.SinkWindow`; the paper compresses once after a full-attention
prefill). The memory a real cache would hold is computed exactly by
:meth:`RazorAttention.kept_entries` / :meth:`RazorAttention.kv_fraction`.

GQA: a KV head is shared by ``n_heads / n_kv_heads`` query heads (query head h reads KV
head h // group, TransformerLens's ``repeat_interleave``). ``heads`` are KV heads
(``head_kind="kv"``) or query heads (``head_kind="query"``: the KV head of any retrieval
query head is kept whole, so all query heads of its group see the full context).

Importing this module registers ``"razor"`` in :data:`probes.kv_policies.KV_POLICIES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from probes.errors import InputError
from probes.kv_policies import KV_POLICIES, _Data


def kv_group(model) -> int:
    """How many query heads share one KV head."""
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
    return model.cfg.n_heads // n_kv


def n_kv_heads(model) -> int:
    return getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads


def dropped_mask(n_q: int, n_k: int, n_sink: int, window: int, device=None) -> torch.Tensor:
    """[n_q, n_k] bool: key j is dropped for the query at absolute position t = n_k − n_q + i
    when n_sink <= j < t − window (the cache before t holds the sinks and the ``window``
    previous tokens; t itself is always seen)."""
    t = torch.arange(n_k - n_q, n_k, device=device)[:, None]
    j = torch.arange(n_k, device=device)[None, :]
    return (j >= n_sink) & (j < t - window)


def drops_any(n_k: int, n_sink: int, window: int) -> bool:
    """Whether :func:`dropped_mask` has any True (its last query, t = n_k − 1, drops the most)."""
    return n_sink < n_k - 1 - window


@KV_POLICIES.register("razor")
@dataclass(frozen=True)
class RazorAttention(_Data):
    """Full KV for the retrieval ``heads`` ((layer, head), …), sinks + window (+ one
    compensation token) for every other KV head. See the module docstring."""

    heads: tuple = ()
    n_sink: int = 4
    window: int = 252
    compensation: bool = True
    head_kind: str = "kv"  # "kv": heads are (layer, kv_head); "query": (layer, query head)
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
        for layer, qheads in self.streaming_query_heads(model).items():
            if not qheads:
                continue
            on_device = {"cpu": torch.tensor(qheads)}  # the head index, copied once per device

            def hook(scores, hook=None, on_device=on_device):
                n_q, n_k = scores.shape[-2], scores.shape[-1]
                if not drops_any(n_k, self.n_sink, self.window):  # decided without a device sync
                    return scores
                key = str(scores.device)
                if key not in on_device:
                    on_device[key] = on_device["cpu"].to(scores.device)
                idx = on_device[key]
                drop = dropped_mask(n_q, n_k, self.n_sink, self.window, scores.device)
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

            out.append((f"blocks.{layer}.attn.hook_attn_scores", hook))
        return out

    # -- memory accounting -----------------------------------------------------------------

    def kept_entries(self, model, length: int) -> int:
        """KV entries (one key + one value of one KV head at one position, summed over
        layers) a real RazorAttention cache holds after ``length`` tokens: ``length`` for
        each retrieval KV head; min(length, S + W) for the others, + 1 compensation token
        when something was dropped (length > S + W)."""
        if length < 0:
            raise InputError("length must be >= 0.")
        full = len(self.kv_heads(model))
        rest = model.cfg.n_layers * n_kv_heads(model) - full
        bound = self.n_sink + self.window
        streaming = min(length, bound) + (1 if self.compensation and length > bound else 0)
        return full * length + rest * streaming

    def kv_fraction(self, model, length: int) -> float:
        """Fraction of the full cache's entries kept after ``length`` tokens."""
        if length <= 0:
            raise InputError("length must be >= 1.")
        return self.kept_entries(model, length) / (model.cfg.n_layers * n_kv_heads(model) * length)

    def describe(self) -> str:
        comp = " + compensation" if self.compensation else ""
        return f"razor: {len(self.heads)} retrieval {self.head_kind} heads full; sinks {self.n_sink} + window {self.window}{comp}"


def uniform_window_for(model, policy: RazorAttention, length: int) -> RazorAttention:
    """A head-agnostic sinks + window cache (no retrieval heads, no compensation, same
    sinks, same masking implementation) holding as close as possible to — never more than —
    the entries ``policy`` holds after ``length`` tokens: every KV head keeps S + W' entries."""
    n = model.cfg.n_layers * n_kv_heads(model)
    per_head = policy.kept_entries(model, length) // n
    window = max(per_head - policy.n_sink, 0)
    return RazorAttention((), n_sink=policy.n_sink, window=window, compensation=False)
