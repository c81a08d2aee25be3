"""KV memory vs NIAH accuracy (docs/retrieval.md#razorattention): RazorAttention
(:class:`probes.razor.RazorAttention` — the top-m retrieval KV heads keep their whole cache,
every other KV head sinks + a recent buffer + one compensation token) against a head-agnostic
sinks + fixed-window cache holding the same number of entries or fewer
(:func:`probes.razor.uniform_window_for`), for m over a range. The buffer is the paper's
L_h = max(S0, ⌈N / C⌉) (``buffer="ratio"``, S0 = ``window``, C = ``compression_ratio``) or a
fixed ``window`` (``buffer="fixed"``). The memory column is the exact entry count a real cache
would hold at the end of each prompt (``kv_fraction``), averaged over the tests; accuracy is
greedy NIAH (ROUGE-1 recall of the needle's answer part > 0.5, :func:`probes.niah.rouge1_recall`).

The KV-head ranking is given (``heads``, e.g. from DuoAttention gates) or detected on the
same grid with Wu et al.'s retrieval score, a KV head scoring the max of its query heads
(GQA). DuoAttention reports full accuracy with 50 % full-attention heads on GQA models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Literal

import numpy as np
import pandas as pd

from mechscope.probes.niah import GridParams, NiahAnswer, grid_tests, newline_ids, response_text
from mechscope.probes.batched_greedy import greedy_rows
from mechscope.probes.errors import InputError
from mechscope.probes.models import model_id
from mechscope.probes.razor import RazorAttention, kv_group, n_kv_heads, uniform_window_for
from mechscope.probes.results import Result, analysis


def kv_ranking(scores: np.ndarray, model=None) -> list[tuple[int, int, float]]:
    """(layer, kv_head, score) by descending score (ties: lower layer, then head). With a
    ``model``, ``scores`` are per query head and a KV head takes the max of its group;
    without, ``scores`` are already per KV head (e.g. DuoAttention gates)."""
    s = np.asarray(scores, dtype=np.float64)
    if model is not None:
        g = kv_group(model)
        s = s.reshape(s.shape[0], -1, g).max(-1)
    rows = [(l, k, float(s[l, k])) for l in range(s.shape[0]) for k in range(s.shape[1])]
    return sorted(rows, key=lambda r: (-r[2], r[0], r[1]))


@dataclass(frozen=True)
class KVCurveParams(GridParams):
    """Parameters of :func:`kv_curve`."""

    kind: ClassVar[str] = "kv_curve"
    kv_heads: tuple[int, ...] = field(default=(0, 3, 9, 18, 45, 90), metadata={"help": "numbers of full-KV heads (m)"})
    n_sink: int = field(default=4, metadata={"help": "sink tokens of the streaming heads"})
    window: int = field(default=64, metadata={"help": "recent tokens of the streaming heads: the minimum S0 "
                                                      "(buffer ratio) or the whole buffer (buffer fixed)"})
    buffer: Literal["ratio", "fixed"] = field(default="ratio", metadata={
        "help": "streaming heads' recent buffer: ratio = the paper's max(S0, N/C); fixed = window"})
    compression_ratio: float = field(default=5.0, metadata={"help": "C of the ratio buffer"})
    compensation: bool = field(default=True, metadata={"help": "RazorAttention's compensation token"})
    rows: int = field(default=32, metadata={"help": "rows (test × policy) decoded together in one batch"})
    heads: tuple = field(default=(), metadata={"help": "ranked KV heads ((layer, kv_head), ...); empty: detect"})

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "kv_heads", tuple(int(m) for m in self.kv_heads))
        object.__setattr__(self, "heads", tuple((int(l), int(k)) for l, k in self.heads))
        if not self.kv_heads or any(m < 0 for m in self.kv_heads):
            raise InputError("Give numbers of full-KV heads m >= 0.")
        if self.n_sink < 0 or self.window < 0:
            raise InputError("n_sink and window must be >= 0.")
        if self.rows < 1:
            raise InputError("rows must be at least 1.")
        self.policy(())  # the buffer fields are checked where the policy checks them

    def policy(self, heads) -> RazorAttention:
        """The RazorAttention policy these parameters describe, with ``heads`` kept whole."""
        return RazorAttention(tuple(heads), n_sink=self.n_sink, window=self.window, compensation=self.compensation,
                              buffer=self.buffer, compression_ratio=self.compression_ratio)


@dataclass(frozen=True)
class KVCurveResult(Result):
    curve: pd.DataFrame  # policy (full / razor / uniform), m, kv_fraction, accuracy, mean_recall, n_tests
    ranked_kv_heads: tuple
    complete: bool = True

    kind = "kv_curve"

    def to_frame(self) -> pd.DataFrame:
        return self.curve

    def figures(self) -> dict:
        return {"kv_curve": curve_figure(self.curve, self.params)}


def curve_figure(curve: pd.DataFrame, params: KVCurveParams):
    import plotly.graph_objects as go

    fig = go.Figure()
    styles = {"razor": ("crimson", "RazorAttention (top-m retrieval KV heads full)"),
              "uniform": ("steelblue", "uniform sinks + window, same memory")}
    for policy, (colour, label) in styles.items():
        part = curve[curve["policy"] == policy].sort_values("kv_fraction") if len(curve) else curve
        if len(part):
            fig.add_trace(go.Scatter(x=part["kv_fraction"], y=part["accuracy"], mode="lines+markers", name=label,
                                     line={"color": colour}, customdata=part[["m", "mean_recall"]].to_numpy(),
                                     hovertemplate="KV kept %{x:.3f}<br>accuracy %{y:.2f}<br>m = %{customdata[0]} full "
                                                   "KV heads<br>mean key recall %{customdata[1]:.2f}<extra></extra>"))
    full = curve[curve["policy"] == "full"] if len(curve) else curve
    if len(full):
        fig.add_trace(go.Scatter(x=[1.0], y=[float(full["accuracy"].iloc[0])], mode="markers", name="full cache",
                                 marker={"color": "black", "size": 10, "symbol": "star"}))
    comp = "with" if params.compensation else "without"
    fig.update_layout(title=f"NIAH accuracy vs KV memory kept (sinks {params.n_sink} + "
                            f"{params.policy(()).describe_buffer()}, {comp} compensation)",
                      xaxis_title="fraction of the full KV cache kept",
                      yaxis_title="NIAH accuracy", yaxis_range=[-0.02, 1.02], xaxis_range=[0, 1.02])
    return fig


def answers_under_policies(model, built, policies, max_new_tokens: int, rows: int = 32, prefill_rows: int = 1,
                           tick: Callable[[int], None] | None = None) -> tuple[list[list[NiahAnswer]], list[list[float]]]:
    """Greedy NIAH answers of every test under every policy: ``answers[c][i]`` for test
    ``built[i]`` under ``policies[c](test)`` (a KV policy, or None / a callable returning None
    for the full cache), and the KV fraction it keeps. The tests of one prompt length run with
    every policy as rows of shared batches (:func:`probes.batched_greedy.greedy_rows`, each row
    under its own policy's hooks; rows of equal length, no padding, since the eviction masks are
    positional) — the greedy procedure of ``probes.niah.answer(..., kv_policy=policy)``."""
    n_pol = len(policies)
    answers: list[list] = [[None] * len(built) for _ in range(n_pol)]
    fracs = [[1.0] * len(built) for _ in range(n_pol)]
    by_len: dict[int, list[int]] = {}
    for i, (t, _) in enumerate(built):
        by_len.setdefault(t.prompt_len, []).append(i)
    stops = newline_ids(model)
    for plen, idx in sorted(by_len.items(), reverse=True):
        hook_lists: dict[object, list] = {}
        prompts, row_hooks, where = [], [], []
        for c, fn in enumerate(policies):
            for i in idx:
                pol = fn(built[i][0]) if callable(fn) else fn
                if pol is not None and pol not in hook_lists:
                    hook_lists[pol] = pol.hooks(model)
                prompts.append(built[i][0].prompt_ids)
                row_hooks.append(hook_lists[pol] if pol is not None else [])
                where.append((c, i))
                fracs[c][i] = 1.0 if pol is None else pol.kv_fraction(model, plen)
        for start in range(0, len(prompts), rows):
            sl = slice(start, start + rows)
            outs = greedy_rows(model, prompts[sl], max_new_tokens, stop_tokens=stops, row_hooks=row_hooks[sl],
                               require_equal_lengths=True, prefill_rows=prefill_rows)
            for (c, i), o in zip(where[sl], outs):
                answers[c][i] = NiahAnswer.of(built[i][1], response_text(model, o.new_tokens), o.new_tokens)
            if tick is not None:
                tick(len(outs))
    return answers, fracs


@analysis(KVCurveParams)
def kv_curve(model, params: KVCurveParams, progress: Callable[[int, int], None] | None = None) -> KVCurveResult:
    """NIAH accuracy vs KV memory, RazorAttention vs a uniform cache (module docstring).
    Interrupting (KeyboardInterrupt) returns the finished points with ``complete=False``."""
    n = model.cfg.n_layers * n_kv_heads(model)
    for m in params.kv_heads:
        if m > n:
            raise InputError(f"m = {m} is larger than the number of KV heads ({n}).")
    built = grid_tests(model, params)
    if params.heads:
        ranked = list(params.heads)
        RazorAttention(tuple(ranked)).validate(model)
        if max(params.kv_heads) > len(ranked):
            raise InputError(f"m = {max(params.kv_heads)} is larger than the {len(ranked)} ranked KV heads given.")
    else:
        from mechscope.analyses.retrieval import RetrievalParams, retrieval_heads

        det = retrieval_heads(model, RetrievalParams(**{f: getattr(params, f) for f in GridParams.__dataclass_fields__},
                                                     proxy_seqs=0))
        ranked = [(l, k) for l, k, _ in kv_ranking(det.head_scores, model)]
    thr = params.recall_threshold
    total = (1 + 2 * len(params.kv_heads)) * len(built)
    done = [0]

    def point(policy: str, m: int, answers, fracs) -> dict:
        keys = np.array([a.recall for a in answers])  # ROUGE-1 recall of the answer part
        return {"policy": policy, "m": m, "kv_fraction": float(np.mean(fracs)), "accuracy": float(np.mean(keys > thr)),
                "mean_recall": float(keys.mean()), "n_tests": len(built)}

    def tick(k: int) -> None:
        done[0] += k
        if progress is not None:
            progress(done[0], total)

    rows, complete = [], True
    try:
        (full,), (ffrac,) = answers_under_policies(model, built, [None], params.max_new_tokens, params.rows,
                                                   tick=tick)
        rows.append(point("full", n, full, ffrac))
        for m in params.kv_heads:
            razor = params.policy(ranked[:m])
            (ra, ua), (rf, uf) = answers_under_policies(
                model, built, [lambda t: razor, lambda t: uniform_window_for(model, razor, t.prompt_len)],
                params.max_new_tokens, params.rows, tick=tick)
            rows += [point("razor", m, ra, rf), point("uniform", m, ua, uf)]
    except KeyboardInterrupt:
        complete = False
    return KVCurveResult(model_id=model_id(model), params=params, curve=pd.DataFrame(rows),
                         ranked_kv_heads=tuple(ranked), complete=complete)
