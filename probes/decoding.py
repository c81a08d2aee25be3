"""KV-cached generation with pluggable strategies, KV-cache policies and interventions.

The loop in :func:`generate` never changes when a new decoding method arrives:

* a **strategy** picks the next token from the step's logits (``Greedy``, ``Sample``; later
  contrastive search, DeCoRe, context-aware decoding). A strategy may add its own hooks
  (``hooks(model)``) and may run extra forward passes through ``state``.
* a **KV-cache policy** decides what the cache keeps after each forward pass (``FullCache``;
  later sinks + window). TransformerLens caches keys *before* rotary embedding and
  re-applies rotary from position 0 over the cache on every call, so a policy that drops
  entries automatically re-assigns positions by place in the cache (StreamingLLM's scheme).
* **interventions** are attached for the whole generation through
  :func:`probes.interventions.applied` (lock held, hooks removed on exit).

Register new ones with :func:`register_strategy` / :func:`register_kv_policy` so the CLI
and the dashboard can name them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Protocol, Sequence

import torch

from probes.errors import InputError
from probes.interventions import HookList, Intervention, applied
from probes.tokens import as_token_tensor, str_tokens

# ---------------------------------------------------------------------------------------
# Strategies


@dataclass
class StepState:
    """What a strategy sees at one decoding step."""

    model: object
    tokens: list[int]  # prompt + generated so far
    logits: torch.Tensor  # [d_vocab], float32, next-token logits (after interventions)
    step: int
    generator: torch.Generator
    interventions: Sequence[Intervention] = ()
    scratch: dict = field(default_factory=dict)  # per-generation memory for strategies


class Strategy(Protocol):
    name: ClassVar[str]

    def select(self, state: StepState) -> int: ...


@dataclass(frozen=True)
class Greedy:
    name: ClassVar[str] = "greedy"

    def select(self, state: StepState) -> int:
        return int(torch.argmax(state.logits))


@dataclass(frozen=True)
class Sample:
    """Ancestral sampling with temperature, then top-k, then nucleus (top-p) truncation."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    name: ClassVar[str] = "sample"

    def __post_init__(self):
        if not self.temperature > 0:
            raise InputError("temperature must be > 0.")
        if self.top_k is not None and self.top_k < 1:
            raise InputError("top_k must be at least 1.")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise InputError("top_p must lie in (0, 1].")

    def select(self, state: StepState) -> int:
        logits = state.logits.float() / self.temperature
        if self.top_k is not None and self.top_k < logits.numel():
            kth = torch.topk(logits, self.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p is not None and self.top_p < 1:
            sorted_logits, order = torch.sort(logits, descending=True)
            probs = sorted_logits.softmax(-1)
            # keep the smallest prefix whose mass reaches top_p (always the first token)
            drop = probs.cumsum(-1) - probs >= self.top_p
            sorted_logits[drop] = float("-inf")
            logits = torch.full_like(logits, float("-inf")).scatter(0, order, sorted_logits)
        probs = logits.softmax(-1)
        return int(torch.multinomial(probs, 1, generator=state.generator))


STRATEGIES: dict[str, Callable[..., Strategy]] = {"greedy": Greedy, "sample": Sample}


def register_strategy(name: str, factory: Callable[..., Strategy]) -> None:
    STRATEGIES[name] = factory


# ---------------------------------------------------------------------------------------
# KV-cache policies


class KVPolicy(Protocol):
    name: ClassVar[str]
    prefill_chunk: int | None  # feed the prompt in chunks of this many tokens (None: at once)
    max_cache_len: int | None  # None: the cache grows with the text

    def trim(self, cache) -> None: ...


@dataclass(frozen=True)
class FullCache:
    """Keep every key and value (ordinary KV caching)."""

    name: ClassVar[str] = "full"
    prefill_chunk: int | None = None
    max_cache_len: int | None = None

    def trim(self, cache) -> None:
        return None


KV_POLICIES: dict[str, Callable[..., KVPolicy]] = {"full": FullCache}


def register_kv_policy(name: str, factory: Callable[..., KVPolicy]) -> None:
    KV_POLICIES[name] = factory


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
    if kv_policy is None:
        return None
    if isinstance(kv_policy, str):
        if kv_policy not in KV_POLICIES:
            raise InputError(f"Unknown KV-cache policy {kv_policy!r}: choose from {', '.join(KV_POLICIES)}.")
        return KV_POLICIES[kv_policy]()
    return kv_policy


def resolve_strategy(strategy) -> Strategy:
    if isinstance(strategy, str):
        if strategy not in STRATEGIES:
            raise InputError(f"Unknown decoding strategy {strategy!r}: choose from {', '.join(STRATEGIES)}.")
        return STRATEGIES[strategy]()
    return strategy


# ---------------------------------------------------------------------------------------
# The loop


@dataclass(frozen=True)
class Generation:
    prompt_tokens: tuple[int, ...]
    new_tokens: tuple[int, ...]
    text: str  # the decoded continuation
    logprobs: tuple[float, ...]  # log p(chosen token) under the (intervened) model, per step
    strategy: str
    kv_policy: str
    interventions: tuple[str, ...]
    max_cache_len_seen: int  # the longest the KV cache got (0 without a cache)


class _Stepper:
    """Feeds tokens through the model with or without a cache, applying the policy."""

    def __init__(self, model, policy: KVPolicy | None):
        self.model, self.policy = model, policy
        self.cache = new_cache(model) if policy is not None else None
        self.all_tokens: list[int] = []
        self.longest = 0

    def feed(self, tokens: Sequence[int]) -> torch.Tensor:
        """Feed new tokens; return the logits at the last one ([d_vocab])."""
        self.all_tokens.extend(tokens)
        model, device = self.model, self.model.cfg.device
        if self.cache is None:
            ids = torch.tensor([self.all_tokens], device=device)
            return model(ids)[0, -1]
        chunk = self.policy.prefill_chunk or len(tokens)
        logits = None
        for start in range(0, len(tokens), chunk):
            piece = torch.tensor([list(tokens[start : start + chunk])], device=device)
            mask = torch.ones_like(piece)
            logits = model(piece, past_kv_cache=self.cache, attention_mask=mask)[0, -1]
            self.longest = max(self.longest, cache_len(self.cache))
            self.policy.trim(self.cache)
        return logits


def generate(
    model,
    prompt,
    max_new_tokens: int = 32,
    strategy: Strategy | str = "greedy",
    interventions: Sequence[Intervention] = (),
    kv_policy: KVPolicy | str | None = "full",
    on_token: Callable[[int, str], None] | None = None,
    stop_at_eos: bool = True,
) -> Generation:
    """Generate up to ``max_new_tokens`` after ``prompt`` (text or token ids).

    ``kv_policy=None`` recomputes the whole text every step (the reference the cached paths
    are tested against). ``on_token(token_id, token_text)`` streams each new token.
    """
    if max_new_tokens < 0:
        raise InputError("max_new_tokens must be >= 0.")
    prompt_ids = [int(t) for t in as_token_tensor(model, prompt)[0]]
    strat = resolve_strategy(strategy)
    policy = resolve_kv_policy(kv_policy)
    if policy is not None and hasattr(policy, "validate"):
        policy.validate(model)
    bounded = policy is not None and policy.max_cache_len is not None
    if not bounded and len(prompt_ids) + max_new_tokens > model.cfg.n_ctx:
        raise InputError(
            f"Prompt ({len(prompt_ids)}) + max_new_tokens ({max_new_tokens}) exceeds n_ctx "
            f"({model.cfg.n_ctx}); use fewer tokens or a bounded KV-cache policy."
        )
    eos = getattr(model.tokenizer, "eos_token_id", None) if model.tokenizer is not None else None
    generator = torch.Generator().manual_seed(int(getattr(strat, "seed", 0)))
    extra: HookList = list(strat.hooks(model)) if hasattr(strat, "hooks") else []
    new: list[int] = []
    logprobs: list[float] = []
    stepper = _Stepper(model, policy)
    scratch: dict = {}
    with applied(model, interventions, extra_hooks=extra), torch.no_grad():
        if max_new_tokens:
            logits = stepper.feed(prompt_ids)
        for step in range(max_new_tokens):
            logits = logits.float()
            state = StepState(model, list(stepper.all_tokens), logits, step, generator, interventions, scratch)
            tok = strat.select(state)
            new.append(tok)
            logprobs.append(float(logits.log_softmax(-1)[tok]))
            if on_token is not None:
                on_token(tok, str_tokens(model, [tok])[0])
            if stop_at_eos and eos is not None and tok == eos:
                break
            if step + 1 < max_new_tokens:
                logits = stepper.feed([tok])
    text = model.tokenizer.decode(new) if model.tokenizer is not None else " ".join(map(str, new))
    return Generation(
        prompt_tokens=tuple(prompt_ids),
        new_tokens=tuple(new),
        text=text,
        logprobs=tuple(logprobs),
        strategy=getattr(strat, "name", type(strat).__name__),
        kv_policy="none" if policy is None else policy.name,
        interventions=tuple(iv.describe() for iv in interventions),
        max_cache_len_seen=stepper.longest,
    )


def score_continuation(model, prompt, continuation: Sequence[int], interventions: Sequence[Intervention] = ()) -> torch.Tensor:
    """log p(continuation[t] | prompt, continuation[:t]) for every t, in one teacher-forced pass."""
    prompt_ids = as_token_tensor(model, prompt)[0].tolist()
    cont = [int(t) for t in continuation]
    if not cont:
        return torch.zeros(0)
    ids = torch.tensor([prompt_ids + cont], device=model.cfg.device)
    as_token_tensor(model, ids)  # range and length checks
    with applied(model, interventions), torch.no_grad():
        logits = model(ids)[0, len(prompt_ids) - 1 : -1].float()
    return logits.log_softmax(-1).gather(-1, torch.tensor(cont, device=logits.device)[:, None])[:, 0].cpu()


# Bounded policies (sinks + window, window-only) register themselves on import.
import probes.kv_policies  # noqa: E402,F401
