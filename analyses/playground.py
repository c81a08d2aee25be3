"""Baseline vs intervened generation, with the per-token probability change.

``compare_generations`` decodes the prompt twice with the same strategy (and the same seed
when sampling): once plain (full KV cache, no interventions) and once with the
interventions and the chosen KV-cache policy. When both use the full cache and the strategy
picks from the logits alone (greedy, sampling), the two continuations are decoded as two
rows of ONE batched forward per step (:func:`probes.decoding.generate_rows`, interventions
restricted to the intervened row), and the baseline continuation is then scored under both
in one more batched pass; other combinations decode one after the other. To show *where* the intervention bites, the
baseline continuation is then teacher-forced through both models, giving each baseline
token its probability with and without the intervention (p_base, p_intervened, Δp).

``strategy_side="intervened"`` makes the decoding strategy itself the intervention: the
baseline is greedy decoding of the plain model (for context-aware decoding, on the context
and the prompt), the intervened run uses the strategy (with any interventions and KV-cache
policy), and p_intervened is each baseline token's probability under the strategy's own
step distribution — the softmax of its scores (CAD, contrastive decoding, DoLa) — with the
baseline tokens forced; for strategies without scores, under the (intervened) model.
``"both"`` (the default, and what results saved before the option load as) decodes both
sides with the strategy.

With the full cache (or none) the teacher-forced scores come from
:func:`probes.decoding.score_continuation` (one pass). A policy that drops cache entries
changes what each step sees, so there the baseline tokens are forced step by step through
the policy's own cache instead (``Forced`` below); with the full cache both routes agree
(tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Literal

import numpy as np
import pandas as pd
import torch

from mechscope.probes.decoding import (
    STRATEGIES,
    FullCache,
    Greedy,
    StepState,
    generate,
    generate_rows,
    resolve_kv_policy,
    resolve_strategy,
    score_continuation,
)
from mechscope.probes.errors import InputError
from mechscope.probes.interventions import Rows, applied, hooks_for
from mechscope.probes.serial import Data

# every decoding strategy a saved Playground result may name registers itself on import
from mechscope.probes import cad, contrastive, contrastive_decoding, decore, dola  # noqa: F401,E402  isort: skip
from mechscope.probes.models import model_id
from mechscope.probes.results import Params, Result, analysis
from mechscope.probes.tokens import str_tokens

from mechscope.probes.prompts import normalise_prompt, prompt_ids

TokenCallback = Callable[[str, int, str], None]  # (which: "baseline"|"intervened", token id, token text)

DEFAULT_PROMPT = "Once upon a time, there was a little robot who"


@STRATEGIES.register("forced")
@dataclass(frozen=True)
class Forced(Data):
    """A 'strategy' that replays given tokens, so ``generate`` reports their log-probs."""

    tokens: tuple[int, ...]
    name: ClassVar[str] = "forced"

    def select(self, state: StepState) -> int:
        return int(self.tokens[state.step])


@dataclass(frozen=True)
class PlaygroundParams(Params):
    kind: ClassVar[str] = "playground"
    prompt: str | tuple[int, ...] = field(default=DEFAULT_PROMPT, metadata={"help": "the text to continue"})
    interventions: tuple = field(default=(), metadata={"help": "interventions of the intervened run"})
    max_new_tokens: int = field(default=20, metadata={"help": "tokens to generate"})
    strategy: object = field(default=Greedy(), metadata={"help": "decoding strategy (a registered strategy)"})
    kv_policy: object = field(default=FullCache(), metadata={"help": "KV-cache policy of the intervened run (None: no cache)"})
    prepend_bos: bool | None = field(default=None, metadata={"help": "prepend the model's BOS token (None: the model's policy)"})
    strategy_side: Literal["both", "intervened"] = field(
        default="both", metadata={"help": "decode both sides with the strategy, or only the intervened side "
                                          "(the baseline is then greedy)"})

    def __post_init__(self):
        normalise_prompt(self)
        if self.strategy_side not in ("both", "intervened"):
            raise InputError(f"strategy_side must be 'both' or 'intervened', not {self.strategy_side!r}.")
        object.__setattr__(self, "interventions", tuple(self.interventions))
        object.__setattr__(self, "strategy", resolve_strategy(self.strategy))
        object.__setattr__(self, "kv_policy", resolve_kv_policy(self.kv_policy))
        n = self.max_new_tokens
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise InputError(f"max_new_tokens must be a positive integer, not {n!r}.")


@dataclass(frozen=True)
class PlaygroundResult(Result):
    prompt_tokens: list
    baseline_ids: np.ndarray  # [n] int64
    baseline_tokens: list
    baseline_text: str
    intervened_ids: np.ndarray  # [m] int64
    intervened_tokens: list
    intervened_text: str
    p_base: np.ndarray  # [n] p(baseline token t | prompt, baseline[:t]) without interventions
    p_intervened: np.ndarray  # [n] the same with the interventions (and KV policy)

    kind = "playground"

    @property
    def delta_p(self) -> np.ndarray:
        return np.asarray(self.p_intervened, dtype=float) - np.asarray(self.p_base, dtype=float)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "pos": np.arange(len(self.baseline_ids)),
                "token_id": np.asarray(self.baseline_ids, dtype=np.int64),
                "token": list(self.baseline_tokens),
                "p_base": np.asarray(self.p_base, dtype=float),
                "p_intervened": np.asarray(self.p_intervened, dtype=float),
                "delta_p": self.delta_p,
            }
        )

    def figures(self) -> dict:
        import plotly.graph_objects as go

        d = self.delta_p
        n = len(d)
        labels = [f"{i}:{t!r}" for i, t in enumerate(self.baseline_tokens)]
        lim = float(max(np.abs(d).max(initial=0.0), 1e-6))
        fig = go.Figure(
            go.Bar(
                x=list(range(n)),
                y=d,
                marker=dict(color=d, colorscale="RdBu", cmin=-lim, cmax=lim),
                customdata=np.stack([self.p_base, self.p_intervened], -1) if n else None,
                hovertext=labels,
                hovertemplate="%{hovertext}<br>p_base %{customdata[0]:.3f} → p_int %{customdata[1]:.3f}"
                "<br>Δp %{y:+.3f}<extra></extra>",
            )
        )
        fig.update_layout(
            title="Δp per baseline token (intervened − baseline)",
            xaxis=dict(title="baseline token", tickmode="array", tickvals=list(range(n)), ticktext=labels),
            yaxis=dict(title="Δp", range=[-1.02, 1.02]),
            height=380,
            margin=dict(l=10, r=10, t=50, b=10),
        )
        return {"delta_p": fig}


@analysis(PlaygroundParams)
def compare_generations(model, params: PlaygroundParams, on_token: TokenCallback | None = None) -> PlaygroundResult:
    """Generate baseline and intervened continuations of ``prompt`` and score the baseline
    continuation under both models (see the module docstring)."""
    ids = prompt_ids(model, params.prompt, params.prepend_bos)
    strat, policy, interventions = params.strategy, params.kv_policy, params.interventions
    n_new = params.max_new_tokens
    hooks_for(model, interventions)  # validate every intervention before any decoding

    def stream(which: str):
        return None if on_token is None else (lambda tok, text: on_token(which, tok, text))

    full = isinstance(policy, FullCache)
    if params.strategy_side == "intervened":
        return _strategy_vs_greedy(model, params, ids, stream)
    batched = full and not hasattr(strat, "hooks") and not getattr(strat, "needs_model", False)
    if batched:  # one forward per step for both continuations
        names = ("baseline", "intervened")
        cb = None if on_token is None else (lambda row, tok, text: on_token(names[row], tok, text))
        base, inter = generate_rows(model, ids, [(), interventions], n_new, strat, policy, on_token=cb)
    else:
        base = generate(model, ids, n_new, strat, (), "full", on_token=stream("baseline"))
        inter = generate(model, ids, n_new, strat, interventions, policy, on_token=stream("intervened"))
    cont = list(base.new_tokens)
    if policy is None or full:
        lp_base, lp_int = _score_both(model, ids, cont, interventions)
    else:
        lp_base = score_continuation(model, ids, cont).numpy()
        forced = generate(model, ids, len(cont), Forced(tuple(cont)), interventions, policy, stop_at_eos=False)
        lp_int = np.asarray(forced.logprobs)
    return _result(model, params, ids, cont, base, inter, lp_base, lp_int)


def _result(model, params, ids, cont: list[int], base, inter, lp_base, lp_int) -> "PlaygroundResult":
    """The Result of a baseline generation ``base`` and an intervened one ``inter``, with the
    log-probabilities of the baseline tokens under each side."""
    return PlaygroundResult(
        model_id=model_id(model),
        params=params,
        prompt_tokens=str_tokens(model, ids),
        baseline_ids=np.asarray(cont, dtype=np.int64),
        baseline_tokens=str_tokens(model, cont) if cont else [],
        baseline_text=base.text,
        intervened_ids=np.asarray(inter.new_tokens, dtype=np.int64),
        intervened_tokens=str_tokens(model, inter.new_tokens) if inter.new_tokens else [],
        intervened_text=inter.text,
        p_base=np.exp(np.asarray(lp_base, dtype=np.float64)),
        p_intervened=np.exp(np.asarray(lp_int, dtype=np.float64)),
    )


class _ForcedScores:
    """Replays ``tokens`` under ``inner`` (its hooks and side passes run as when it decodes),
    recording log softmax(inner.scores) of each forced token (the model's log-prob for a
    strategy without scores)."""

    name = "forced"

    def __init__(self, inner, tokens):
        self.inner, self.tokens, self.logprobs = inner, tuple(tokens), []
        self.needs_model = True
        self.wants_prefix_cache = bool(getattr(inner, "wants_prefix_cache", False))

    def hooks(self, model):
        return list(self.inner.hooks(model)) if hasattr(self.inner, "hooks") else []

    def select(self, state: StepState) -> int:
        tok = int(self.tokens[state.step])
        scores = self.inner.scores(state) if hasattr(self.inner, "scores") else state.logits
        self.logprobs.append(float(scores.float().log_softmax(-1)[tok]))
        return tok


def _strategy_vs_greedy(model, params: PlaygroundParams, ids, stream) -> PlaygroundResult:
    """Greedy baseline (plain model) vs the strategy (with the interventions and policy)."""
    strat, policy, interventions, n_new = params.strategy, params.kv_policy, params.interventions, params.max_new_tokens
    prompt = [int(i) for i in ids]
    base_prompt = strat.with_context(model, prompt) if hasattr(strat, "with_context") else prompt
    base = generate(model, base_prompt, n_new, Greedy(), (), "full", on_token=stream("baseline"))
    inter = generate(model, prompt, n_new, strat, interventions, policy, on_token=stream("intervened"))
    cont = list(base.new_tokens)
    lp_int = np.zeros(0)
    if cont:
        forced = _ForcedScores(strat, cont)
        generate(model, prompt, len(cont), forced, interventions, policy, stop_at_eos=False)
        lp_int = np.asarray(forced.logprobs)
    return _result(model, params, ids, cont, base, inter, base.logprobs, lp_int)


def _score_both(model, ids: torch.Tensor, cont: list[int], interventions) -> tuple[np.ndarray, np.ndarray]:
    """log p(cont[t] | prompt, cont[:t]) without (row 0) and with (row 1) the interventions,
    in one teacher-forced batched pass."""
    if not cont:
        return np.zeros(0), np.zeros(0)
    prompt = [int(i) for i in ids]
    seq = torch.tensor([prompt + cont] * 2, device=model.cfg.device)
    with applied(model, [Rows(iv, (1,)) for iv in interventions]), torch.no_grad():
        logits = model(seq)[:, len(prompt) - 1 : -1].float()
    target = torch.tensor(cont, device=logits.device)[None, :, None].expand(2, -1, 1)
    lp = logits.log_softmax(-1).gather(-1, target)[..., 0].cpu().numpy()
    return lp[0], lp[1]
