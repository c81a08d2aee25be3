"""Bounded KV-cache policies: StreamingLLM's sinks + window, and window-only.

Xiao et al. 2023 ("Efficient Streaming Language Models with Attention Sinks"): the cache
keeps the first ``n_sink`` tokens (the attention sinks, default 4) and the ``window`` most
recent ones. Positions are assigned by place *in the cache*, not in the text: TransformerLens
caches keys before rotary and re-applies rotary from 0 over the cache on every call, so
dropping entries with :func:`probes.decoding.keep_cache_positions` is exactly StreamingLLM's
re-assignment. Window-only (the baseline that fails) keeps just the recent tokens.

Between steps the cache holds at most ``max_cache_len`` entries, so a new token attends to
those plus itself. ``prefill_chunk = 1``: a prompt longer than the cache is fed one token at
a time, so every token sees exactly what the policy allows (feeding it at once would let
prompt tokens attend to more than the window). :func:`stream_logprobs` teacher-forces a
text through one or several policies this way, but feeds the first tokens, which fit
without any eviction, in one exact chunk.

Importing this module registers ``"sink_window"`` and ``"window"`` in
:data:`probes.decoding.KV_POLICIES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol, Sequence

import torch

from mechscope.probes.errors import InputError
from mechscope.probes.interventions import Intervention, applied
from mechscope.probes.serial import Data, Registry




# ---------------------------------------------------------------------------------------
# The policy registry and cache helpers

#: KV-cache policies by kind ("full", "sink_window", "window", ...)
KV_POLICIES = Registry("kv_policy")


class KVPolicy(Protocol):
    name: ClassVar[str]
    prefill_chunk: int | None  # feed the prompt in chunks of this many tokens (None: at once)
    max_cache_len: int | None  # None: the cache grows with the text

    def trim(self, cache) -> None: ...


@KV_POLICIES.register("full")
@dataclass(frozen=True)
class FullCache(Data):
    """Keep every key and value (ordinary KV caching)."""

    name: ClassVar[str] = "full"
    prefill_chunk: int | None = None
    max_cache_len: int | None = None

    def trim(self, cache) -> None:
        return None


def register_kv_policy(name: str, cls):
    """Register a KV-policy dataclass under ``name`` (same as ``@KV_POLICIES.register(name)``)."""
    return KV_POLICIES.register(name)(cls)


def cache_len(cache) -> int:
    return int(cache.entries[0].past_keys.shape[1])


def keep_cache_positions(cache, keep: torch.Tensor) -> None:
    """Keep only the cache positions ``keep`` (1-D index, in order) in every layer and in the
    cache's attention mask. Positions of what stays are re-assigned by place in the cache."""
    for entry in cache.entries:
        idx = keep.to(entry.past_keys.device)
        entry.past_keys = entry.past_keys.index_select(1, idx)
        entry.past_values = entry.past_values.index_select(1, idx)
    mask = cache.previous_attention_mask
    cache.previous_attention_mask = mask.index_select(1, keep.to(mask.device))


def new_cache(model, batch_size: int = 1):
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    return TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch_size)


def resolve_kv_policy(kv_policy) -> KVPolicy | None:
    """None (no cache: recompute over the whole text every step), a name, or a policy."""
    if kv_policy is None or (isinstance(kv_policy, str) and kv_policy == "none"):
        return None
    return KV_POLICIES.resolve(kv_policy, "KV-cache policy")



# ---------------------------------------------------------------------------------------
# Bounded policies


def _check_int(name: str, value, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, not {value!r}.")
    return value


def check_cache_fits(model, policy) -> None:
    """A bounded cache must be smaller than the model's context (else it bounds nothing)."""
    n_ctx = model.cfg.n_ctx
    if policy.max_cache_len >= n_ctx:
        raise InputError(
            f"The KV cache ({policy.max_cache_len} tokens) must be smaller than n_ctx ({n_ctx}): "
            f"choose a smaller window."
        )


class _BoundedPolicy:
    """Shared by bounded policies: subclasses give ``max_cache_len`` and ``keep_index``."""

    def validate(self, model) -> None:
        check_cache_fits(model, self)

    def trim(self, cache) -> None:
        keep = self.keep_index(cache_len(cache))
        if keep is not None:
            keep_cache_positions(cache, keep)


@KV_POLICIES.register("sink_window")
@dataclass(frozen=True)
class SinkWindow(Data, _BoundedPolicy):
    """Keep the first ``n_sink`` cache positions and the last ``window`` (StreamingLLM)."""

    n_sink: int = 4
    window: int = 252
    prefill_chunk: int | None = 1
    name: ClassVar[str] = "sink_window"

    def __post_init__(self):
        _check_int("n_sink (S)", self.n_sink, 0)
        _check_int("window (W)", self.window, 1)
        if self.n_sink > self.window:
            raise InputError(f"S = {self.n_sink} sink tokens exceed the window W = {self.window}: use S <= W.")

    @property
    def max_cache_len(self) -> int:
        return self.n_sink + self.window

    def keep_index(self, length: int) -> torch.Tensor | None:
        """Cache positions to keep out of ``length`` (None: keep all)."""
        if length <= self.max_cache_len:
            return None
        return torch.cat([torch.arange(self.n_sink), torch.arange(length - self.window, length)])

    def describe(self) -> str:
        return f"sinks {self.n_sink} + window {self.window}"


@KV_POLICIES.register("window")
@dataclass(frozen=True)
class WindowOnly(Data, _BoundedPolicy):
    """Keep only the ``window`` most recent cache positions (window attention baseline)."""

    window: int = 256
    prefill_chunk: int | None = 1
    name: ClassVar[str] = "window"

    def __post_init__(self):
        _check_int("window (W)", self.window, 1)

    @property
    def max_cache_len(self) -> int:
        return self.window

    def keep_index(self, length: int) -> torch.Tensor | None:
        if length <= self.window:
            return None
        return torch.arange(length - self.window, length)

    def describe(self) -> str:
        return f"window {self.window}"




def _keep_rows(cache, keeps: Sequence[torch.Tensor | None]) -> None:
    """Per-row version of keep_cache_positions: row b keeps ``keeps[b]`` (all the same length)."""
    length = cache_len(cache)
    idx = torch.stack([k if k is not None else torch.arange(length) for k in keeps])  # [B, P']
    for entry in cache.entries:
        i = idx.to(entry.past_keys.device)[:, :, None, None]
        entry.past_keys = entry.past_keys.gather(1, i.expand(-1, -1, *entry.past_keys.shape[2:]))
        entry.past_values = entry.past_values.gather(1, i.expand(-1, -1, *entry.past_values.shape[2:]))
    mask = cache.previous_attention_mask
    cache.previous_attention_mask = mask.gather(1, idx.to(mask.device))


def stream_logprobs(
    model,
    tokens: Sequence[int] | torch.Tensor,
    policies: Sequence,
    interventions: Sequence[Intervention] = (),
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Teacher-force ``tokens`` through a KV cache under each policy; return
    ``[len(policies), len(tokens) - 1]`` log p(tokens[t+1] | what the cache holds at t).

    All policies run together as rows of one batch (one weight read per step), so they
    must share ``max_cache_len``. Tokens are fed one at a time once the cache is full; the
    prefix that fits without eviction goes in one chunk (exact: nothing is dropped there).
    """
    ids = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
    if ids.numel() < 2:
        raise InputError("Streaming needs a text of at least 2 tokens.")
    if not policies:
        raise InputError("Give at least one KV-cache policy.")
    caps = {p.max_cache_len for p in policies}
    if len(caps) != 1:
        raise InputError("Policies streamed together must have the same cache size.")
    cap = caps.pop()
    for p in policies:
        p.validate(model)
    if int(ids.max()) >= model.cfg.d_vocab or int(ids.min()) < 0:
        raise InputError(f"Token ids must lie in 0..{model.cfg.d_vocab - 1}.")
    n, b = ids.numel(), len(policies)
    device = model.cfg.device
    out = torch.empty(b, n - 1)
    cache = new_cache(model, batch_size=b)
    first = min(cap, n - 1)  # fits without eviction: one exact chunk
    with applied(model, interventions), torch.no_grad():
        piece = ids[:first].to(device)[None].expand(b, -1)
        logits = model(piece, past_kv_cache=cache, attention_mask=torch.ones_like(piece))
        out[:, : first] = logits.float().log_softmax(-1).gather(-1, ids[1 : first + 1].to(device)[None, :, None].expand(b, -1, 1))[..., 0].cpu()
        for t in range(first, n - 1):
            keeps = [p.keep_index(cache_len(cache)) for p in policies]
            if any(k is not None for k in keeps):
                _keep_rows(cache, keeps)
            piece = ids[t : t + 1].to(device)[None].expand(b, 1)
            logits = model(piece, past_kv_cache=cache, attention_mask=torch.ones_like(piece))[:, -1].float()
            out[:, t] = logits.log_softmax(-1)[:, int(ids[t + 1])].cpu()
            if progress is not None:
                progress(t + 1, n - 1)
    return out
