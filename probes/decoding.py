"""KV-cached generation with pluggable strategies, KV-cache policies and interventions.

The loop in :func:`generate` never changes when a new decoding method arrives:

* a **strategy** picks the next token from the step's logits (``Greedy``, ``Sample``;
  contrastive search, DeCoRe, context-aware decoding, contrastive decoding, DoLa in their own
  modules). A strategy may add its own hooks (``hooks(model)``) and may run extra forward
  passes through ``state`` (:func:`side_logits`: a second KV-cached view).
* a **KV-cache policy** decides what the cache keeps after each forward pass (``FullCache``;
  later sinks + window). TransformerLens caches keys *before* rotary embedding and
  re-applies rotary from position 0 over the cache on every call, so a policy that drops
  entries automatically re-assigns positions by place in the cache (StreamingLLM's scheme).
* **interventions** are attached for the whole generation through
  :func:`probes.interventions.applied` (lock held, hooks removed on exit), on every position
  (``intervention_scope="prompt_and_decode"``) or on the decoding passes only
  (``"decode"``: the prompt but its last token is prefilled without them, as the
  retrieval-head references mask heads; see :data:`probes.interventions.MASK_SCOPES`).

* **reducers** (``{hook name: fn(tensor, site, batch)}``, as in :func:`probes.capture.run`)
  are called at every forward pass — the prefill and each decoding step — so an analysis can
  score attention *during* generation (retrieval heads) without keeping any pattern.

Strategies and KV policies are registered dataclasses (``STRATEGIES``, ``KV_POLICIES``):
``to_dict()`` / ``STRATEGIES.from_dict`` save and rebuild them, and the CLI and the
dashboard list them by kind. :func:`generate_rows` decodes several variants of one prompt
(a baseline row and intervened rows) in one batched forward per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Protocol, Sequence

import torch

from mechscope.probes.errors import InputError
from mechscope.probes.forward import last_logits
from mechscope.probes.hooknames import site
from mechscope.probes.interventions import (Gate, HookList, Intervention, Rows, applied, check_scope, hooks_for,
                                            positionwise)
from mechscope.probes.kv_policies import (  # noqa: F401  (the cache helpers live with the policies)
    KV_POLICIES,
    FullCache,
    KVPolicy,
    cache_len,
    keep_cache_positions,
    new_cache,
    register_kv_policy,
    resolve_kv_policy,
)
from mechscope.probes.serial import Data, Registry
from mechscope.probes import razor as _razor  # noqa: F401,E402  (registers the "razor" KV policy)
from mechscope.probes.tokens import as_token_tensor, str_tokens

#: decoding strategies by kind ("greedy", "sample", ...)
STRATEGIES = Registry("strategy")

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


@STRATEGIES.register("greedy")
@dataclass(frozen=True)
class Greedy(Data):
    name: ClassVar[str] = "greedy"

    def select(self, state: StepState) -> int:
        return int(torch.argmax(state.logits))


@STRATEGIES.register("sample")
@dataclass(frozen=True)
class Sample(Data):
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
        probs = logits.softmax(-1).cpu()  # the generator lives on the CPU: same draws on any device
        return int(torch.multinomial(probs, 1, generator=state.generator))


def register_strategy(name: str, cls):
    """Register a strategy dataclass under ``name`` (same as ``@STRATEGIES.register(name)``)."""
    return STRATEGIES.register(name)(cls)


def _checked_policy(model, kv_policy, n_prompt: int, max_new_tokens: int):
    """The resolved KV policy, validated; an unbounded cache must hold prompt + new tokens."""
    policy = resolve_kv_policy(kv_policy)
    if policy is not None and hasattr(policy, "validate"):
        policy.validate(model)
    bounded = policy is not None and policy.max_cache_len is not None
    if not bounded and n_prompt + max_new_tokens > model.cfg.n_ctx:
        raise InputError(
            f"Prompt ({n_prompt}) + max_new_tokens ({max_new_tokens}) exceeds n_ctx "
            f"({model.cfg.n_ctx}); use fewer tokens or a bounded KV-cache policy."
        )
    return policy


def resolve_strategy(strategy) -> Strategy:
    """A strategy by name, from its saved dict, or as given."""
    return STRATEGIES.resolve(strategy, "decoding strategy")


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
    """Feeds tokens (the same count for every row) through the model with or without a
    cache, applying the policy; tells reducers what each forward pass holds."""

    def __init__(self, model, policy: KVPolicy | None, rows: int = 1):
        self.model, self.policy = model, policy
        self.cache = new_cache(model, rows) if policy is not None else None
        self.all_tokens: list[list[int]] = [[] for _ in range(rows)]
        self.longest = 0
        self.step: int | None = None  # None while prefilling
        self.batch = None  # the Batch reducers see during the current forward
        self.joinable = False  # generate's main stepper: may carry one side branch as a second row
        self.side: _Side | None = None  # the side branch riding along as row 1 (see side_logits)

    def feed(self, tokens: Sequence[Sequence[int]]) -> torch.Tensor:
        """Feed new tokens (one list per row); return the logits at the last one ([rows, d_vocab])."""
        from mechscope.probes.capture import Batch

        if self.side is not None:
            return self._feed_joined(tokens)
        for row, new in zip(self.all_tokens, tokens):
            row.extend(new)
        model, device = self.model, self.model.cfg.device
        rows, n_new = len(self.all_tokens), len(tokens[0])
        if self.cache is None:
            ids = torch.tensor(self.all_tokens, device=device)
            self.batch = Batch(ids, torch.full((rows,), ids.shape[1]), list(range(rows)), q_offset=0, step=self.step)
            return last_logits(model, ids)
        chunk = self.policy.prefill_chunk or n_new
        logits = None
        for start in range(0, n_new, chunk):
            piece = torch.tensor([list(t[start : start + chunk]) for t in tokens], device=device)
            offset = cache_len(self.cache) if self.cache.entries[0].past_keys.shape[1] else 0
            self.batch = Batch(piece, torch.full((rows,), piece.shape[1]), list(range(rows)), q_offset=offset,
                               step=self.step)
            logits = last_logits(model, piece, past_kv_cache=self.cache, attention_mask=torch.ones_like(piece))
            self.longest = max(self.longest, cache_len(self.cache))
            self.policy.trim(self.cache)
        return logits

    def _feed_joined(self, tokens: Sequence[Sequence[int]]) -> torch.Tensor:
        """One token for the main row and the same token for the side branch, in ONE batched
        forward pass (row 0 main, row 1 the side branch under its own interventions)."""
        side = self.side
        if len(tokens) != 1 or len(tokens[0]) != 1:
            raise InputError("A joined side branch advances one token per step.")
        tok = int(tokens[0][0])
        n_ctx = self.model.cfg.n_ctx
        if len(side.branch.all_tokens[0]) + 1 > n_ctx:
            raise InputError(f"The side branch's {len(side.branch.all_tokens[0]) + 1} tokens exceed n_ctx ({n_ctx}).")
        if side.pending:  # first joined step: both caches become the two rows of one
            self.cache = _two_row_cache(self.model, self.cache, side.branch.cache)
            side.branch.cache = None
            side.pending = False
        self.all_tokens[0].append(tok)
        side.branch.all_tokens[0].append(tok)
        piece = torch.tensor([[tok], [tok]], device=self.model.cfg.device)
        with applied(self.model, [Rows(iv, (1,)) for iv in side.interventions]):
            logits = last_logits(self.model, piece, past_kv_cache=self.cache, attention_mask=torch.ones_like(piece))
        self.longest = max(self.longest, len(self.all_tokens[0]))
        side.logits = logits[1]
        return logits[:1]


class _Side:
    """A side branch that rides along with the main stepper as row 1 of its forward passes."""

    def __init__(self, key: str, branch: "_Stepper", interventions: tuple, logits: torch.Tensor):
        self.key, self.branch, self.interventions = key, branch, interventions
        self.pending = True  # its cache is still separate (merged at the next main step)
        self.logits = logits  # its latest next-token logits


def _two_row_cache(model, main, side):
    """A 2-row KV cache from two 1-row ones, the shorter left-padded: zero keys and values
    with attention mask 0. TransformerLens caches keys before rotary and re-derives each row's
    positions from the cumulative attention mask, so every row keeps its unpadded positions."""
    n = max(main.previous_attention_mask.shape[1], side.previous_attention_mask.shape[1])

    def pad(t: torch.Tensor) -> torch.Tensor:  # left-pad axis 1 to n
        extra = n - t.shape[1]
        if extra == 0:
            return t
        return torch.cat([t.new_zeros((t.shape[0], extra) + tuple(t.shape[2:])), t], dim=1)

    out = new_cache(model, 2)
    for mine, a, b in zip(out.entries, main.entries, side.entries):
        mine.past_keys = torch.cat([pad(a.past_keys), pad(b.past_keys)])
        mine.past_values = torch.cat([pad(a.past_values), pad(b.past_values)])
    out.previous_attention_mask = torch.cat([pad(main.previous_attention_mask), pad(side.previous_attention_mask)])
    return out


def can_join(model, policy) -> bool:
    """Whether a side branch may ride as a left-padded second row of the main forward pass:
    a full KV cache (a policy that trims or re-places entries would mix the padded rows) and
    positions TransformerLens derives per row from the attention mask (rotary without dynamic
    NTK scaling, or learned absolute positions). Otherwise the side branch runs its own pass."""
    cfg = model.cfg
    return (type(policy) is FullCache and cfg.positional_embedding_type in ("rotary", "standard")
            and not getattr(cfg, "use_dynamic_ntk_rope", False))


def clone_cache(model, cache):
    """An independent copy of a KV cache (keys, values and attention mask)."""
    out = new_cache(model, cache.previous_attention_mask.shape[0])
    for mine, theirs in zip(out.entries, cache.entries):
        mine.past_keys = theirs.past_keys.clone()
        mine.past_values = theirs.past_values.clone()
    out.previous_attention_mask = cache.previous_attention_mask.clone()
    return out


def _reducer_hooks(model, reducers, stepper: _Stepper) -> HookList:
    out: HookList = []
    for name, fn in (reducers or {}).items():
        if name not in model.hook_dict:
            raise InputError(f"Unknown hook point {name!r} (see model.hook_dict for valid names).")
        where = site(name)

        def hook(tensor, hook=None, fn=fn, where=where):
            fn(tensor, where, stepper.batch)

        out.append((name, hook))
    return out


def generate(
    model,
    prompt,
    max_new_tokens: int = 32,
    strategy: Strategy | str = "greedy",
    interventions: Sequence[Intervention] = (),
    kv_policy: KVPolicy | str | None = "full",
    on_token: Callable[[int, str], None] | None = None,
    stop_at_eos: bool = True,
    reducers: dict | None = None,
    stop_tokens: Sequence[int] = (),
    intervention_scope: str = "prompt_and_decode",
) -> Generation:
    """Generate up to ``max_new_tokens`` after ``prompt`` (text or token ids).

    ``kv_policy=None`` recomputes the whole text every step (the reference the cached paths
    are tested against). ``on_token(token_id, token_text)`` streams each new token.
    ``reducers`` are called at every forward pass with a :class:`probes.capture.Batch` whose
    ``step`` is None during the prompt and the decoding step after it, and whose
    ``q_offset`` is the absolute position of the first query the pass holds (under a cache).
    ``stop_tokens``: ids that end the generation once emitted (kept in the output, like EOS).

    ``intervention_scope="decode"`` (needs a KV cache): the interventions act on decoding
    passes only — the prompt but its last token is prefilled without them (its cache
    entries are the plain model's), then the last prompt token is fed with them and its
    logits give the first new token, as Wu et al.'s and Gema et al.'s reference code do.
    The prompt then reaches reducers in two passes (both with ``step`` None). A strategy
    with ``wants_prefix_cache`` gets the same split and a copy of the cache after the
    prefix in ``scratch["prefix_cache"]`` (DeCoRe's masked branch starts from it).
    """
    if max_new_tokens < 0:
        raise InputError("max_new_tokens must be >= 0.")
    prompt_ids = [int(t) for t in as_token_tensor(model, prompt)[0]]
    strat = resolve_strategy(strategy)
    policy = _checked_policy(model, kv_policy, len(prompt_ids), max_new_tokens)
    iv_hooks = hooks_for(model, interventions)
    gate = None
    if check_scope(intervention_scope) == "decode" and iv_hooks:
        if policy is None:
            raise InputError("Decode-only interventions need a KV cache (kv_policy=None recomputes the prompt "
                             "at every step); use kv_policy='full'.")
        gate = Gate(on=False)
        iv_hooks = gate.wrap(iv_hooks)
    wants_prefix = bool(getattr(strat, "wants_prefix_cache", False)) and policy is not None
    split = (gate is not None or wants_prefix) and len(prompt_ids) > 0
    eos = getattr(model.tokenizer, "eos_token_id", None) if model.tokenizer is not None else None
    generator = torch.Generator().manual_seed(int(getattr(strat, "seed", 0)))
    extra: HookList = list(strat.hooks(model)) if hasattr(strat, "hooks") else []
    if policy is not None and hasattr(policy, "hooks"):  # head-aware policies (probes.razor) mask by hooks
        extra += list(policy.hooks(model))
    new: list[int] = []
    logprobs: list[float] = []
    stepper = _Stepper(model, policy)
    # a side branch (side_logits) joins the main pass as a second row where the rows stay
    # exact: no reducers (they would see two rows), position-wise interventions only
    stepper.joinable = (not reducers and can_join(model, policy)
                        and all(positionwise(iv) for iv in interventions))
    extra += _reducer_hooks(model, reducers, stepper)
    # a strategy that runs its own forward passes (contrastive search) finds the stepper here
    # and may hand back the next step's logits as scratch["next_logits"] (token already fed)
    scratch: dict = {"_stepper": stepper}
    stops = frozenset(int(t) for t in stop_tokens)
    with applied(model, (), extra_hooks=iv_hooks + extra), torch.no_grad():
        if max_new_tokens and split:
            if len(prompt_ids) > 1:
                stepper.feed([prompt_ids[:-1]])  # the prefix: interventions off
            if wants_prefix:
                scratch["prefix_cache"] = clone_cache(model, stepper.cache)
            if gate is not None:
                gate.on = True
            logits = stepper.feed([prompt_ids[-1:]])[0]
        elif max_new_tokens:
            logits = stepper.feed([prompt_ids])[0]
        for step in range(max_new_tokens):
            logits = logits.float()
            state = StepState(model, list(stepper.all_tokens[0]), logits, step, generator, interventions, scratch)
            tok = strat.select(state)
            new.append(tok)
            logprobs.append(float(logits.log_softmax(-1)[tok]))
            if on_token is not None:
                on_token(tok, str_tokens(model, [tok])[0])
            if (stop_at_eos and eos is not None and tok == eos) or tok in stops:
                break
            if step + 1 < max_new_tokens:
                stepper.step = step
                fed = scratch.pop("next_logits", None)
                logits = stepper.feed([[tok]])[0] if fed is None else fed
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


def side_logits(state: StepState, key: str, tokens: Sequence[int], interventions: Sequence[Intervention] = ()) -> torch.Tensor:
    """Next-token logits ([d_vocab], float32) of a second view of the generation: a KV-cached
    branch (the main stepper's policy, a full cache without one) kept in ``state.scratch[key]``
    and fed ``tokens`` — the branch's whole token sequence so far, which must extend what it
    was fed before — under ``interventions`` (the generation's own hooks stay attached).
    CAD's with-context view, contrastive decoding's masked-heads amateur.

    The first call prefills the branch on its own. After that, where :func:`can_join` allows
    (full KV cache, per-row positions; no reducers, position-wise generation interventions)
    the branch becomes row 1 of the generation's own forward pass — its cache left-padded
    beside the main row's, ``interventions`` applied to row 1 only (:class:`Rows`) — so a step
    costs ONE batched one-token pass; every later call must then give the branch's previous
    tokens plus the step's new token. Otherwise each call is one more pass over the new tokens."""
    base = state.scratch.get("_stepper")
    tokens = [int(t) for t in tokens]
    interventions = tuple(interventions)
    held = joined_logits(state, key, tokens, interventions)
    if held is not None:
        return held
    branch = state.scratch.get(key)
    if branch is None:
        policy = base.policy if base is not None and base.policy is not None else FullCache()
        branch = state.scratch[key] = _Stepper(state.model, policy)
    seen = branch.all_tokens[0]
    if tokens[: len(seen)] != seen or len(tokens) == len(seen):
        raise InputError("A side branch must be fed a strict extension of its tokens.")
    bounded = branch.policy.max_cache_len is not None
    if not bounded and len(tokens) > state.model.cfg.n_ctx:
        raise InputError(f"The side branch's {len(tokens)} tokens exceed n_ctx ({state.model.cfg.n_ctx}).")
    with applied(state.model, list(interventions)):
        logits = branch.feed([tokens[len(seen):]])[0]
    join(state, key, branch, interventions, logits)
    return logits.float()


def joined_logits(state: StepState, key: str, tokens: Sequence[int], interventions: Sequence[Intervention]):
    """The logits the side branch ``key`` got as row 1 of the step's main pass ([d_vocab]
    float32), or None when it is not joined; ``tokens`` must be all the branch was fed."""
    base = state.scratch.get("_stepper")
    joined = base.side if base is not None else None
    if joined is None or joined.key != key:
        return None
    if [int(t) for t in tokens] != joined.branch.all_tokens[0] or tuple(interventions) != joined.interventions:
        raise InputError("A side branch joined to the main pass is fed the step's token, under the same "
                         "interventions, at every step.")
    return joined.logits.float()


def join(state: StepState, key: str, branch: "_Stepper", interventions: Sequence[Intervention],
         logits: torch.Tensor) -> bool:
    """Make ``branch`` (a 1-row KV-cached stepper of the same model, under ``interventions``,
    whose latest pass gave ``logits``) ride along as row 1 of the generation's next forward
    passes, where :func:`can_join` and the generation allow; True if it now does (then read
    it with :func:`joined_logits`)."""
    base = state.scratch.get("_stepper")
    interventions = tuple(interventions)
    if (base is None or not base.joinable or base.side is not None or branch.cache is None
            or branch.model is not base.model or not all(positionwise(iv) for iv in interventions)):
        return False
    base.side = _Side(key, branch, interventions, logits)
    return True


def generate_rows(
    model,
    prompt,
    variants: Sequence[Sequence[Intervention]],
    max_new_tokens: int = 32,
    strategy: Strategy | str = "greedy",
    kv_policy: KVPolicy | str | None = "full",
    on_token: Callable[[int, int, str], None] | None = None,
    stop_at_eos: bool = True,
) -> list[Generation]:
    """Decode ``prompt`` once per variant — row b under ``variants[b]`` (``()`` for the
    baseline) — in ONE batched forward pass per step (interventions wrapped in
    :class:`probes.interventions.Rows`). Each row picks its own tokens with its own copy of
    the strategy's random state, so every row equals a separate :func:`generate` call.
    Strategies that run their own forward passes or hooks are refused here.
    ``on_token(row, token_id, token_text)`` streams each row's new tokens.
    """
    if max_new_tokens < 0:
        raise InputError("max_new_tokens must be >= 0.")
    if not variants:
        raise InputError("Give at least one variant (use () for the baseline).")
    prompt_ids = [int(t) for t in as_token_tensor(model, prompt)[0]]
    strat = resolve_strategy(strategy)
    if hasattr(strat, "hooks") or getattr(strat, "needs_model", False):
        raise InputError(f"Strategy {getattr(strat, 'name', strat)!r} runs its own passes: decode its rows one by one.")
    policy = _checked_policy(model, kv_policy, len(prompt_ids), max_new_tokens)
    rows = len(variants)
    wrapped = [Rows(iv, (b,)) for b, ivs in enumerate(variants) for iv in ivs]
    eos = getattr(model.tokenizer, "eos_token_id", None) if model.tokenizer is not None else None
    seed = int(getattr(strat, "seed", 0))
    gens = [torch.Generator().manual_seed(seed) for _ in range(rows)]
    scratch = [dict() for _ in range(rows)]
    new: list[list[int]] = [[] for _ in range(rows)]
    logprobs: list[list[float]] = [[] for _ in range(rows)]
    done = [False] * rows
    stepper = _Stepper(model, policy, rows)
    policy_hooks: HookList = list(policy.hooks(model)) if policy is not None and hasattr(policy, "hooks") else []
    with applied(model, wrapped, extra_hooks=policy_hooks), torch.no_grad():
        if max_new_tokens:
            logits = stepper.feed([prompt_ids] * rows)
        for step in range(max_new_tokens):
            logits = logits.float()
            picked = []
            for b in range(rows):
                tok = strat.select(StepState(model, list(stepper.all_tokens[b]), logits[b], step, gens[b],
                                             tuple(variants[b]), scratch[b]))
                picked.append(tok)
                if not done[b]:
                    new[b].append(tok)
                    logprobs[b].append(float(logits[b].log_softmax(-1)[tok]))
                    if on_token is not None:
                        on_token(b, tok, str_tokens(model, [tok])[0])
                    if stop_at_eos and eos is not None and tok == eos:
                        done[b] = True
            if all(done) or step + 1 >= max_new_tokens:
                break
            stepper.step = step
            logits = stepper.feed([[t] for t in picked])
    out = []
    for b in range(rows):
        text = model.tokenizer.decode(new[b]) if model.tokenizer is not None else " ".join(map(str, new[b]))
        out.append(Generation(
            prompt_tokens=tuple(prompt_ids), new_tokens=tuple(new[b]), text=text, logprobs=tuple(logprobs[b]),
            strategy=getattr(strat, "name", type(strat).__name__),
            kv_policy="none" if policy is None else policy.name,
            interventions=tuple(iv.describe() for iv in variants[b]),
            max_cache_len_seen=stepper.longest,
        ))
    return out


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
