"""Baseline vs intervened generation, with the per-token probability change.

``compare_generations`` decodes the prompt twice with the same strategy (and the same seed
when sampling): once plain (full KV cache, no interventions) and once with the
interventions and the chosen KV-cache policy. To show *where* the intervention bites, the
baseline continuation is then teacher-forced through both models, giving each baseline
token its probability with and without the intervention (p_base, p_intervened, Δp).

With the full cache (or none) the teacher-forced scores come from
:func:`probes.decoding.score_continuation` (one pass). A policy that drops cache entries
changes what each step sees, so there the baseline tokens are forced step by step through
the policy's own cache instead (``Forced`` below); with the full cache both routes agree
(tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import numpy as np
import pandas as pd

from probes.decoding import FullCache, StepState, generate, resolve_kv_policy, resolve_strategy, score_continuation
from probes.errors import InputError
from probes.interventions import Intervention, hooks_for
from probes.results import Result
from probes.tokens import str_tokens

from analyses.next_token import _model_id, prompt_ids

TokenCallback = Callable[[str, int, str], None]  # (which: "baseline"|"intervened", token id, token text)


@dataclass(frozen=True)
class Forced:
    """A 'strategy' that replays given tokens, so ``generate`` reports their log-probs."""

    tokens: tuple[int, ...]
    name: ClassVar[str] = "forced"

    def select(self, state: StepState) -> int:
        return int(self.tokens[state.step])


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


def compare_generations(
    model,
    prompt,
    interventions: Sequence[Intervention] = (),
    max_new_tokens: int = 20,
    strategy="greedy",
    kv_policy="full",
    prepend_bos: bool | None = None,
    on_token: TokenCallback | None = None,
) -> PlaygroundResult:
    """Generate baseline and intervened continuations of ``prompt`` and score the baseline
    continuation under both models (see the module docstring)."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer, not {max_new_tokens!r}.")
    ids = prompt_ids(model, prompt, prepend_bos)
    strat = resolve_strategy(strategy)
    policy = resolve_kv_policy(kv_policy)
    interventions = tuple(interventions)
    hooks_for(model, interventions)  # validate every intervention before any decoding

    def stream(which: str):
        return None if on_token is None else (lambda tok, text: on_token(which, tok, text))

    base = generate(model, ids, max_new_tokens, strat, (), "full", on_token=stream("baseline"))
    inter = generate(model, ids, max_new_tokens, strat, interventions, policy, on_token=stream("intervened"))
    cont = list(base.new_tokens)
    p_base = np.exp(score_continuation(model, ids, cont).numpy().astype(np.float64))
    if policy is None or isinstance(policy, FullCache):
        lp_int = score_continuation(model, ids, cont, interventions).numpy()
    else:
        forced = generate(model, ids, len(cont), Forced(tuple(cont)), interventions, policy, stop_at_eos=False)
        lp_int = np.asarray(forced.logprobs)
    return PlaygroundResult(
        model_id=_model_id(model),
        params={
            "prompt": prompt if isinstance(prompt, str) else [int(i) for i in ids],
            "prepend_bos": prepend_bos,
            "max_new_tokens": max_new_tokens,
            "strategy": repr(strat),
            "kv_policy": "none" if policy is None else repr(policy),
            "interventions": [iv.describe() for iv in interventions],
        },
        prompt_tokens=str_tokens(model, ids),
        baseline_ids=np.asarray(cont, dtype=np.int64),
        baseline_tokens=str_tokens(model, cont) if cont else [],
        baseline_text=base.text,
        intervened_ids=np.asarray(inter.new_tokens, dtype=np.int64),
        intervened_tokens=str_tokens(model, inter.new_tokens) if inter.new_tokens else [],
        intervened_text=inter.text,
        p_base=p_base,
        p_intervened=np.exp(lp_int.astype(np.float64)),
    )
