"""Edge circuits scored as the MIB circuit track scores them (Mueller et al. 2025; docs/circuits.md#edge-circuits-mib).

Every method ranks every edge of the residual graph (:mod:`probes.edge_attribution`); the
circuit of the top x% edges (MIB's ``apply_topn`` + ``prune``) runs with every other edge
ablated (its upstream output replaced by the corrupted run's, or by the mean), and its
faithfulness is ``f(C) = (m(C) − m(∅)) / (m(N) − m(∅))`` with m the mean logit difference,
N the full model and ∅ the empty circuit (everything ablated). Over MIB's sizes x ∈
{0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100}%:

* CPR (area under the faithfulness curve; higher is better) — trapezoid rule over x as a
  *fraction* (0.001 … 1, linear axis, starting at the smallest size, not at 0), the circuit
  ranked by the *signed* score (MIB's CPR files are written without ``--absolute``);
* CMD (area of |1 − f|; lower is better) — the same integral of |1 − f|, ranked by |score|
  (MIB's ``--absolute``).

``ranking="absolute"`` ranks both by |score| (ours). Methods: ``eap`` (attribution patching,
one gradient), ``eap_ig`` (EAP-IG-inputs, the MIB baseline), ``node_patching`` (a circuit
derived from activation patching of heads and MLPs: an edge scores the smaller of its two
nodes' scores, the input and logits counting as +∞ — ours) and ``random`` (uniform random
scores, averaged over ``n_random`` draws). The discrete-SAE method scores heads and head–head
co-occurrences only — no q/k/v inputs, MLPs, input or logits — so it yields no edges of this
graph and is not in the table.

Statistics: the attribution runs on ``n_prompts`` positive pairs and the curves are measured on
``n_eval`` *other* positive pairs (MIB's train / validation split; ``held_out=False``: the same
pairs). 95% bootstrap intervals resample the evaluation prompts (percentile intervals, as
:func:`probes.stats.bootstrap_ci`; f is a ratio of means, so each resample recomputes the
means). The stability of the circuit itself is the mean pairwise Jaccard overlap of the top
``jaccard_percent``% edge sets (by |score|) from bootstrap resamples of the attribution prompts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import pandas as pd

from mechscope.analyses.circuits.tasks import ALL_TASKS, MIN_FRAC_POSITIVE, check_task, load_circuit_task, select_positive, task_pairs
from mechscope.probes import attribution as attr
from mechscope.probes import edge_attribution as ea
from mechscope.probes.errors import InputError
from mechscope.probes.models import model_id
from mechscope.probes.results import Params, Result, analysis

#: MIB's circuit sizes, percent of all edges
PERCENTAGES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
EDGE_METHODS = ("eap", "eap_ig", "node_patching", "random")


def check_percentages(percentages) -> tuple[float, ...]:
    p = tuple(float(x) for x in percentages)
    bad = [x for x in p if not 0 < x <= 100]
    if bad or not p:
        raise InputError(f"Circuit sizes are percentages of the edges in (0, 100], not {bad or 'nothing'}.")
    if len(p) < 2:
        raise InputError("A faithfulness curve needs at least two circuit sizes.")
    return tuple(sorted(set(p)))


@dataclass(frozen=True)
class EdgeCircuitParams(Params):
    """Edge circuits of every method on one task, scored by faithfulness (CPR, CMD) as MIB does."""

    kind: ClassVar[str] = "circuit_edges"
    task: str = field(default="ioi", metadata={"help": "task: " + ", ".join(ALL_TASKS)})
    n_prompts: int = field(default=24, metadata={"help": "positive prompt pairs the attribution runs on"})
    n_eval: int = field(default=24, metadata={"help": "other positive pairs the faithfulness curves are measured on"})
    held_out: bool = field(default=True, metadata={"help": "measure on pairs not used for attribution (MIB's train / "
                                                           "validation split); off: the same pairs"})
    methods: tuple[str, ...] = field(default=EDGE_METHODS, metadata={"help": "edge methods: " + ", ".join(EDGE_METHODS)})
    ablation: str = field(default="patching", metadata={"help": "pruned edges carry the corrupted run's value (patching, "
                                                                "MIB's default) or the node's mean output (mean)"})
    ig_steps: int = field(default=5, metadata={"help": "EAP-IG integration steps (MIB's default 5)"})
    percentages: tuple[float, ...] = field(default=PERCENTAGES, metadata={"help": "circuit sizes, percent of all edges (MIB's)"})
    ranking: str = field(default="mib", metadata={"help": "mib: CPR from signed scores, CMD from |scores| (the reference); "
                                                          "absolute: both from |scores|"})
    n_random: int = field(default=3, metadata={"help": "random rankings averaged for the random baseline"})
    n_boot: int = field(default=1000, metadata={"help": "bootstrap resamples for the intervals"})
    n_boot_jaccard: int = field(default=20, metadata={"help": "bootstrap resamples of the attribution prompts for the Jaccard overlap"})
    jaccard_percent: float = field(default=1.0, metadata={"help": "top percent of edges whose overlap the Jaccard reports"})
    batch_size: int = field(default=8, metadata={"help": "prompt pairs per batch"})
    seed: int = field(default=0, metadata={"help": "seed of the random baseline and the bootstrap"})
    circuit_file: str = field(default="", metadata={"help": "a MIB circuit file (.json / .pt) whose edge scores are scored "
                                                             "beside the methods, as method 'file'"})

    def __post_init__(self):
        check_task(self.task)
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "percentages", check_percentages(self.percentages))
        bad = [m for m in self.methods if m not in EDGE_METHODS]
        if bad or not self.methods:
            raise InputError(f"Edge methods must be among {', '.join(EDGE_METHODS)}, not {bad or 'nothing'}.")
        ea.check_ablation(self.ablation)
        if self.ranking not in ("mib", "absolute"):
            raise InputError(f"ranking must be 'mib' (the reference) or 'absolute', not {self.ranking!r}.")
        if min(self.n_prompts, self.n_eval, self.ig_steps, self.n_random, self.n_boot, self.n_boot_jaccard, self.batch_size) < 1:
            raise InputError("n_prompts, n_eval, ig_steps, n_random, n_boot, n_boot_jaccard and batch_size must be at least 1.")
        if not 0 < self.jaccard_percent <= 100:
            raise InputError("jaccard_percent must lie in (0, 100].")


# ---------------------------------------------------------------------------------------------
# the reference's curve and areas


def faithfulness(m_circuit, m_full: float, m_empty: float):
    """MIB's normalisation ``(m(C) − m(∅)) / (m(N) − m(∅))``."""
    gap = m_full - m_empty
    if abs(gap) < 1e-12:
        raise InputError("The full model and the empty circuit give the same metric: faithfulness is undefined.")
    return (np.asarray(m_circuit, dtype=np.float64) - m_empty) / gap


def areas(percentages, f) -> tuple[float, float]:
    """(area under f, area of |1 − f|) by the trapezoid rule over the sizes as fractions of
    the edges (MIB's ``evaluate_area_under_curve``, linear axis, from the smallest size)."""
    x = np.asarray(percentages, dtype=np.float64) / 100.0
    f = np.asarray(f, dtype=np.float64)
    dx = np.diff(x)
    return float((dx * (f[:-1] + f[1:]) / 2).sum()), float((dx * (np.abs(1 - f[:-1]) + np.abs(1 - f[1:])) / 2).sum())


def n_edges_at(percent: float, n_edges: int) -> int:
    """MIB's ``int(pct · n_edges)``."""
    return int(percent / 100.0 * n_edges)


def jaccard_mean(sets: np.ndarray) -> float:
    """Mean pairwise Jaccard overlap of the rows of a [B, E] bool array."""
    s = sets.astype(np.float64)
    inter = s @ s.T
    size = s.sum(1)
    union = size[:, None] + size[None, :] - inter
    iu = np.triu_indices(len(s), 1)
    if not len(iu[0]):
        return float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        j = np.where(union[iu] > 0, inter[iu] / union[iu], 1.0)
    return float(j.mean())


def top_set(scores: np.ndarray, real: np.ndarray, k: int) -> np.ndarray:
    s = np.where(real, np.abs(scores), -np.inf).ravel()
    out = np.zeros(s.size, dtype=bool)
    out[np.argsort(-s, kind="stable")[:k]] = True
    return out


def node_derived_scores(graph: ea.EdgeGraph, heads: np.ndarray, mlp: np.ndarray) -> np.ndarray:
    """Edge scores from node scores: min(parent, child), the input and logits +∞."""
    fwd = np.full(graph.n_forward, np.inf)
    bwd = np.full(graph.n_backward, np.inf)
    for l in range(graph.n_layers):
        for h in range(graph.n_heads):
            fwd[graph.fwd_head(l, h)] = heads[l, h]
            for x in "qkv":
                bwd[graph.bwd_head(l, h, x)] = heads[l, h]
        if graph.mlp:
            fwd[graph.fwd_mlp(l)] = mlp[l]
            bwd[graph.bwd_mlp(l)] = mlp[l]
    s = np.minimum(fwd[:, None], bwd[None, :])
    finite = np.isfinite(s)
    big = np.abs(s[finite]).max() * 2 + 1 if finite.any() else 1.0
    return np.where(graph.real, np.where(finite, s, big), 0.0)


# ---------------------------------------------------------------------------------------------
# result


@dataclass(frozen=True)
class EdgeCircuitResult(Result):
    """Edge scores of every scored method [methods, n_forward, n_backward]; the curves (one row
    per method, ranking and size: f with interval) and the summary (CPR, CMD with intervals,
    Jaccard, seconds)."""

    methods: tuple
    scored: tuple  # methods with edge scores (random excluded), in ``scores`` order
    graph_shape: tuple  # (n_layers, n_heads, mlp)
    scores: np.ndarray
    curves: pd.DataFrame
    summary: pd.DataFrame
    m_full: float
    m_empty: float
    check: dict
    n_attr: int
    n_evaluated: int
    d_model: int

    kind = "circuit_edges"

    @property
    def graph(self) -> ea.EdgeGraph:
        L, H, mlp = self.graph_shape
        return ea.EdgeGraph(int(L), int(H), bool(mlp))

    def to_frame(self) -> pd.DataFrame:
        """The summary without its timings (a re-run reproduces the numbers, not the seconds)."""
        return self.summary.drop(columns=["seconds", "eval_seconds"], errors="ignore")

    def circuit(self, method: str, percent: float, absolute: bool = True):
        """The :class:`analyses.circuits.mib.MIBCircuit` of ``method``'s top ``percent``% edges."""
        from mechscope.analyses.circuits.mib import make_circuit

        if method not in self.scored:
            raise InputError(f"No edge scores for method {method!r}: use one of {', '.join(self.scored)}.")
        if not 0 < percent <= 100:
            raise InputError(f"A circuit size is a percentage in (0, 100], not {percent}.")
        g = self.graph
        s = self.scores[self.scored.index(method)]
        keep = ea.topn(g, s, n_edges_at(percent, g.n_edges), absolute=absolute, do_prune=False)
        return make_circuit(g, s, keep)

    def figures(self) -> dict:
        from mechscope.analyses.circuits.figures import edge_circuit_graph, faithfulness_curves

        figs = {f"faithfulness_{c}": faithfulness_curves(self.curves, c, self.params.task) for c in ("cpr", "cmd")}
        if self.scored:
            m = self.scored[-1] if "eap_ig" not in self.scored else "eap_ig"
            figs["circuit_graph"] = edge_circuit_graph(self.circuit(m, 1.0), title=f"{m}: top 1% of edges")
        return figs


# ---------------------------------------------------------------------------------------------
# the analysis


def _split(model, params: EdgeCircuitParams):
    pairs = task_pairs(model, load_circuit_task(params.task))
    want = params.n_prompts + (params.n_eval if params.held_out else 0)
    sel, check = select_positive(model, pairs, want)
    if check["frac_positive"] < MIN_FRAC_POSITIVE or check["mean_ld_clean"] <= 0:
        raise InputError(f"The model does not do task {params.task!r} (accuracy: fraction of prompts with a positive "
                         f"logit difference {check['frac_positive']:.2f}, mean logit difference "
                         f"{check['mean_ld_clean']:.2f}): it is reported, not scored.")
    k = len(sel)
    if not params.held_out:
        return sel, sel, check
    if k < 4:
        raise InputError(f"Only {k} positive prompt pairs: too few to split into attribution and evaluation sets.")
    n_eval = min(params.n_eval, k // 2)
    n_attr = min(params.n_prompts, k - n_eval)
    return sel.subset(range(n_attr)), sel.subset(range(n_attr, n_attr + n_eval)), check


def _bootstrap_areas(percentages, vals: np.ndarray, full: np.ndarray, empty: np.ndarray, idx: np.ndarray):
    """Per resample (rows of ``idx``): the curve, CPR-area and CMD-area. ``vals`` [S, N]."""
    mf, me = full[idx].mean(1), empty[idx].mean(1)  # [B]
    mc = vals[:, idx].mean(2)  # [S, B]
    f = (mc - me[None]) / (mf - me)[None]
    x = np.asarray(percentages) / 100.0
    dx = np.diff(x)[:, None]
    under = (dx * (f[:-1] + f[1:]) / 2).sum(0)
    from1 = (dx * (np.abs(1 - f[:-1]) + np.abs(1 - f[1:])) / 2).sum(0)
    return f, under, from1


def _scores_for(model, name, attr_pairs, graph, params, means, rng, progress):
    """(scores [n_forward, n_backward] or a list of them for random, per-prompt scores or None)."""
    if name in ("eap", "eap_ig"):
        res = ea.edge_scores(model, attr_pairs, steps=1 if name == "eap" else params.ig_steps, ablation=params.ablation,
                             batch_size=params.batch_size, means=means, per_prompt=True, progress=progress)
        return res.scores, res.per_prompt
    if name == "node_patching":
        eff = attr.patch_nodes(model, attr_pairs, "noising", params.batch_size)
        return node_derived_scores(graph, -eff.heads, -eff.mlp), None  # loss of logit difference: positive = helps
    return [np.where(graph.real, rng.random((graph.n_forward, graph.n_backward)), 0.0) for _ in range(params.n_random)], None


@analysis(EdgeCircuitParams)
def circuit_edges(model, params: EdgeCircuitParams, progress: Callable[[int, int], None] | None = None) -> EdgeCircuitResult:
    """Edge circuits of every method in ``params.methods`` on one task, MIB's faithfulness curves,
    CPR and CMD with bootstrap intervals, and the Jaccard stability of each method's top edges."""
    attr_pairs, eval_pairs, check = _split(model, params)
    return edge_circuits_on(model, attr_pairs, eval_pairs, params, check, progress)


def edge_circuits_on(model, attr_pairs: attr.Pairs, eval_pairs: attr.Pairs, params: EdgeCircuitParams, check: dict | None = None,
                     progress: Callable[[int, int], None] | None = None) -> EdgeCircuitResult:
    """:func:`circuit_edges` on given attribution and evaluation pairs (any model, any prompts)."""
    graph = ea.EdgeGraph.from_model(model)
    real = graph.real
    E = graph.n_edges
    rng = np.random.default_rng(params.seed)
    means = ea.node_means(model, graph, attr_pairs, params.batch_size) if params.ablation == "mean" else None
    eval_means = ea.node_means(model, graph, eval_pairs, params.batch_size) if params.ablation == "mean" else None
    seconds, scores, per_prompt = {}, {}, {}
    methods = list(params.methods)
    for name in methods:
        t0 = time.perf_counter()
        scores[name], per_prompt[name] = _scores_for(model, name, attr_pairs, graph, params, means, rng, None)
        seconds[name] = time.perf_counter() - t0
    if params.circuit_file:
        from mechscope.analyses.circuits.mib import import_circuit

        scores["file"], per_prompt["file"], seconds["file"] = import_circuit(params.circuit_file, graph).scores, None, 0.0
        methods.append("file")

    rankings = {"cpr": params.ranking == "absolute", "cmd": True}  # curve -> absolute?
    sizes = [n_edges_at(p, E) for p in params.percentages]
    masks, key_of = [np.ones_like(real), np.zeros_like(real)], {}
    plan = {}  # (method, curve, draw) -> [mask index per size]

    def add(mask):
        k = mask.tobytes()
        if k not in key_of:
            key_of[k] = len(masks)
            masks.append(mask)
        return key_of[k]

    for name in methods:
        draws = scores[name] if isinstance(scores[name], list) else [scores[name]]
        for curve, absolute in rankings.items():
            for d, s in enumerate(draws):
                plan[(name, curve, d)] = [add(ea.topn(graph, s, n, absolute=absolute)) for n in sizes]
    t0 = time.perf_counter()
    vals = ea.evaluate_circuits(model, eval_pairs, masks, params.ablation, params.batch_size, eval_means, progress)
    eval_seconds = time.perf_counter() - t0
    full, empty = vals[0], vals[1]
    m_full, m_empty = float(full.mean()), float(empty.mean())
    n = len(eval_pairs)
    boot = np.random.default_rng(params.seed).integers(0, n, size=(params.n_boot, n))
    lo_q, hi_q = 2.5, 97.5
    curve_rows, summary = [], []
    for name in methods:
        n_draws = len(scores[name]) if isinstance(scores[name], list) else 1
        row = {"method": name, "seconds": seconds[name]}
        for curve, absolute in rankings.items():
            per = np.mean([vals[plan[(name, curve, d)]] for d in range(n_draws)], axis=0)  # [S, N]
            f = faithfulness(per.mean(1), m_full, m_empty)
            under, from1 = areas(params.percentages, f)
            fb, ub, cb = _bootstrap_areas(params.percentages, per, full, empty, boot)
            kept = [int(masks[i].sum()) for i in plan[(name, curve, 0)]]
            for si, p in enumerate(params.percentages):
                curve_rows.append({"method": name, "ranking": "absolute" if absolute else "signed", "curve": curve,
                                   "percent": p, "n_edges": sizes[si], "n_kept": kept[si], "f": float(f[si]),
                                   "f_lo": float(np.percentile(fb[si], lo_q)), "f_hi": float(np.percentile(fb[si], hi_q))})
            if curve == "cpr":
                row.update(cpr=under, cpr_lo=float(np.percentile(ub, lo_q)), cpr_hi=float(np.percentile(ub, hi_q)))
            else:
                row.update(cmd=from1, cmd_lo=float(np.percentile(cb, lo_q)), cmd_hi=float(np.percentile(cb, hi_q)))
        k = max(1, n_edges_at(params.jaccard_percent, E))
        if name == "random":
            row["jaccard"] = jaccard_mean(np.stack([top_set(s, real, k) for s in scores[name]]))
        elif per_prompt[name] is not None:
            pp = per_prompt[name]
            jb = np.random.default_rng(params.seed + 1).integers(0, len(pp), size=(params.n_boot_jaccard, len(pp)))
            row["jaccard"] = jaccard_mean(np.stack([top_set(pp[i].mean(0), real, k) for i in jb]))
        else:
            row["jaccard"] = float("nan")  # no per-prompt scores to resample
        summary.append(row)
    scored = tuple(m for m in methods if m != "random")
    return EdgeCircuitResult(
        model_id=model_id(model), params=params, methods=tuple(methods), scored=scored,
        graph_shape=(graph.n_layers, graph.n_heads, int(graph.mlp)),
        scores=np.stack([scores[m] for m in scored]) if scored else np.zeros((0, graph.n_forward, graph.n_backward)),
        curves=pd.DataFrame(curve_rows), summary=pd.DataFrame(summary).assign(eval_seconds=eval_seconds, n_circuits=len(masks)),
        m_full=m_full, m_empty=m_empty, check=check or {}, n_attr=len(attr_pairs), n_evaluated=n,
        d_model=int(model.cfg.d_model))
