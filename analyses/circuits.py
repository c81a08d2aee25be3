"""Circuit discovery against a patching ground truth.

Tasks (``data/tasks/circuit_*.jsonl``, :func:`load_circuit_task`): clean / corrupted prompt pairs
with single-token answers and distractors; metric = logit difference at the last position.

* :func:`circuit_patch` — the ground truth: activation patching of every head and MLP layer
  (noising: corrupted → clean; denoising: clean → corrupted), as the fraction of the
  clean–corrupted logit-difference gap each node moves.
* :func:`circuit_discover` — the discrete-SAE method alone (O'Neill & Bui 2024; saes/discrete.py:
  by default the reference's one SAE over all heads' d_model outputs).
* :func:`circuit_compare` — every method on one task against the noising ground truth: node
  ROC-AUC at several thresholds fixed in advance (a head is in the ground-truth circuit when
  |normalised patching effect| ≥ t), runtime and passes, and faithfulness curves (mean-ablate
  every head outside the top-k of a method's ranking, or the top-k alone).

Edges (head→head): the ground truth is path patching (Wang et al. 2022; Goldowsky-Dill et al.
2023; ``probes/path_patching.py``) of every ordered pair among the ``edge_top_n`` heads with the
largest |node effect| (a receiver is a query head patched through its own q/k/v inputs, K/V
ungrouped); an edge is in the ground truth when |normalised effect| ≥ t, for the same thresholds
t as the nodes, fixed in advance. Every method scores the same edges: path patching itself,
edge attribution patching and EAP-IG (gradient × sender delta at the receiver's input), and the
discrete-SAE co-occurrence count of the pair. The discrete SAE also gets the reference's own
"edge AUC" (``pair_node_auc``): its top head *pairs* turned into node predictions
(:func:`saes.discrete.pair_node_counts`), scored against the node ground truth.

Ground-truth circuits are published only for GPT-2 small (IOI, greater-than) and attn-only-4l
(docstring); on other models the ground truth is derived here by activation patching of the
model being studied, so the papers' numbers (:data:`ANCHORS`) are not comparable ground truth.
The ground truth is over heads only (the discrete-SAE method scores heads only); MLP effects are
reported beside it. Positive prompts are the clean prompts on which the model's logit difference
is positive (the reference's "the model predicts correctly"), negative prompts their corrupted
counterparts; every method uses the same selected pairs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import pandas as pd
import torch

from mechscope.probes import attribution as attr
from mechscope.probes import path_patching as pp
from mechscope.probes.datasets import load_task
from mechscope.probes.errors import InputError
from mechscope.probes.models import model_id
from mechscope.probes.results import Params, Result, analysis

TASKS = ("ioi", "greater_than", "docstring", "induction")
METHODS = ("patching", "attribution_patching", "eap_ig", "discrete_sae")
_NAN = float("nan")
#: the papers' published numbers on their own models and published circuits — shown as "theirs".
#: IOI and greater-than are on GPT-2 small, docstring on attn-only-4l (a 4-layer attention-only
#: model). O'Neill & Bui's "edge AUC" is a *node* AUC: the heads of the top head pairs
#: (:func:`saes.discrete.pair_node_counts`) against the node circuit — here ``pair_node_auc``;
#: ACDC's is over the published circuit's edges (``edge_auc``).
ANCHORS = [
    {"method": "discrete_sae (O'Neill & Bui)", "model": "GPT-2 small", "task": "ioi", "node_auc": 0.868,
     "pair_node_auc": 0.840, "edge_auc": _NAN},
    {"method": "discrete_sae (O'Neill & Bui)", "model": "GPT-2 small", "task": "greater_than", "node_auc": 0.855,
     "pair_node_auc": 0.873, "edge_auc": _NAN},
    {"method": "discrete_sae (O'Neill & Bui)", "model": "attn-only-4l", "task": "docstring", "node_auc": 0.869,
     "pair_node_auc": 0.896, "edge_auc": _NAN},
    {"method": "ACDC (Conmy et al.)", "model": "GPT-2 small", "task": "ioi", "node_auc": _NAN, "pair_node_auc": _NAN,
     "edge_auc": 0.869},
    {"method": "ACDC (Conmy et al.)", "model": "GPT-2 small", "task": "greater_than", "node_auc": _NAN,
     "pair_node_auc": _NAN, "edge_auc": 0.853},
    {"method": "ACDC (Conmy et al.)", "model": "attn-only-4l", "task": "docstring", "node_auc": _NAN,
     "pair_node_auc": _NAN, "edge_auc": 0.982},
]
#: a task the model "does": at least this fraction of clean prompts with a positive logit difference
MIN_FRAC_POSITIVE = 0.6


# ---------------------------------------------------------------------------------------------
# tasks and scores
def load_circuit_task(name: str) -> list[dict]:
    if name not in TASKS:
        raise InputError(f"Unknown circuit task {name!r}: use one of {', '.join(TASKS)}.")
    return load_task(f"circuit_{name}")


def task_pairs(model, records: list[dict]) -> attr.Pairs:
    if not records:
        raise InputError("The task has no prompts.")
    return attr.make_pairs(model, [r["clean"] for r in records], [r["corrupt"] for r in records],
                           [r["answers"] for r in records], [r["distractors"] for r in records])


def select_positive(model, pairs: attr.Pairs, n: int, batch_size: int = 16):
    """The first ``n`` pairs whose clean logit difference is positive; and the task check
    (fraction positive, mean logit differences) over the pairs evaluated: the first
    max(16, 2n) (all of them where that is not enough positives)."""
    m = min(len(pairs), max(16, 2 * n))
    clean, corrupt = attr.baseline_metrics(model, pairs.subset(range(m)), batch_size)
    if (clean > 0).sum() < n and m < len(pairs):
        clean, corrupt = attr.baseline_metrics(model, pairs, batch_size)
    check = {"n_pairs": len(clean), "frac_positive": float((clean > 0).mean()), "mean_ld_clean": float(clean.mean()),
             "mean_ld_corrupt": float(corrupt.mean()), "frac_positive_corrupt": float((corrupt > 0).mean())}
    idx = np.nonzero(clean > 0)[0][:n]
    if len(idx) == 0:
        raise InputError("The model gets no prompt of this task right (no positive prompts): nothing to explain.")
    return pairs.subset(idx), check


def roc_auc(scores, labels) -> float:
    """ROC-AUC = P(score of a random positive > score of a random negative), ties count ½
    (the Mann–Whitney statistic; equal to the area under the step ROC curve)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    if y.all() or not y.any():
        return float("nan")
    ranks = pd.Series(s).rank(method="average").to_numpy()
    n1, n0 = y.sum(), (~y).sum()
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) points of the ROC curve, thresholds at every distinct score."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[distinct]
    fp = np.cumsum(~y)[distinct]
    tpr = np.r_[0, tp / max(1, y.sum())]
    fpr = np.r_[0, fp / max(1, (~y).sum())]
    return fpr, tpr


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CircuitPatchParams(Params):
    """Activation patching of every head and MLP layer on a shipped task."""

    kind: ClassVar[str] = "circuit_patch"
    task: str = field(default="ioi", metadata={"help": "task: " + ", ".join(TASKS)})
    n_prompts: int = field(default=32, metadata={"help": "positive prompt pairs used"})
    directions: tuple[str, ...] = field(default=("noising", "denoising"), metadata={"help": "noising, denoising"})
    batch_size: int = field(default=8, metadata={"help": "prompt pairs per patching batch"})

    def __post_init__(self):
        object.__setattr__(self, "directions", tuple(self.directions))
        if self.task not in TASKS:
            raise InputError(f"Unknown circuit task {self.task!r}: use one of {', '.join(TASKS)}.")
        if self.n_prompts < 1 or self.batch_size < 1:
            raise InputError("n_prompts and batch_size must be at least 1.")
        for d in self.directions:
            if d not in ("noising", "denoising"):
                raise InputError(f"Direction must be 'noising' or 'denoising', not {d!r}.")


@dataclass(frozen=True)
class CircuitPatchResult(Result):
    """Normalised patching effects: heads [directions, layers, heads], mlp [directions, layers]."""

    directions: tuple
    heads: np.ndarray
    mlp: np.ndarray
    check: dict
    seconds: float
    n_used: int

    kind = "circuit_patch"

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for di, d in enumerate(self.directions):
            L, H = self.heads.shape[1:]
            for l in range(L):
                for h in range(H):
                    rows.append({"direction": d, "node": f"L{l}H{h}", "layer": l, "head": h, "effect": float(self.heads[di, l, h])})
                rows.append({"direction": d, "node": f"L{l}MLP", "layer": l, "head": -1, "effect": float(self.mlp[di, l])})
        return pd.DataFrame(rows)

    def figures(self) -> dict:
        return {f"patching_{d}": heatmap(self.heads[i], f"Patching ({d}): fraction of the logit-difference gap, "
                                          f"task {self.params.task}") for i, d in enumerate(self.directions)}


def heatmap(values: np.ndarray, title: str):
    import plotly.graph_objects as go

    L, H = values.shape
    fig = go.Figure(go.Heatmap(z=values, x=[f"H{h}" for h in range(H)], y=[f"L{l}" for l in range(L)],
                               colorscale="RdBu", zmid=0, colorbar={"title": "effect"}))
    fig.update_layout(title=title, yaxis={"autorange": "reversed", "title": "layer"}, xaxis_title="head",
                      height=max(400, 18 * L))
    return fig


@analysis(CircuitPatchParams)
def circuit_patch(model, params: CircuitPatchParams, progress: Callable[[int, int], None] | None = None) -> CircuitPatchResult:
    pairs, check = select_positive(model, task_pairs(model, load_circuit_task(params.task)), params.n_prompts)
    t0 = time.perf_counter()
    heads, mlps = [], []
    for d in params.directions:
        eff = attr.patch_nodes(model, pairs, d, params.batch_size, progress=progress)
        h, m = eff.normalised()
        heads.append(h)
        mlps.append(m)
    return CircuitPatchResult(model_id(model), params, params.directions, np.stack(heads), np.stack(mlps), check,
                              time.perf_counter() - t0, len(pairs))


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CircuitDiscoverParams(Params):
    """The discrete-SAE method (O'Neill & Bui 2024) on a shipped task."""

    kind: ClassVar[str] = "circuit_discover"
    task: str = field(default="ioi", metadata={"help": "task: " + ", ".join(TASKS)})
    n_prompts: int = field(default=32, metadata={"help": "positive prompt pairs used"})
    n_latents: int = field(default=200, metadata={"help": "latents of each SAE (reference 200)"})
    l1: float = field(default=0.02, metadata={"help": "L1 coefficient (reference 0.02)"})
    epochs: int = field(default=500, metadata={"help": "full-batch Adam steps (reference 500)"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (reference 1e-3)"})
    shared: bool = field(default=True, metadata={"help": "one SAE shared by all heads on their d_model outputs (the reference); "
                                                         "off: per-head SAEs, one per head (ours)"})
    seed: int = field(default=0, metadata={"help": "SAE initialisation seed"})
    n_train: int = field(default=10, metadata={"help": "prompts the SAEs train on (reference 10; 0 = all)"})
    isometric: bool = field(default=True, metadata={"help": "per-head SAEs only: read each head's output in an orthonormal basis of its "
                                                            "output space (d_head coordinates, the d_model norms and inner products)"})
    positions: str = field(default="mean", metadata={"help": "head output averaged over positions (mean, the reference) or at the last position (last)"})

    def __post_init__(self):
        if self.positions not in ("mean", "last"):
            raise InputError(f"positions must be 'mean' (the reference) or 'last', not {self.positions!r}.")
        if self.task not in TASKS:
            raise InputError(f"Unknown circuit task {self.task!r}: use one of {', '.join(TASKS)}.")
        if self.n_prompts < 1:
            raise InputError("n_prompts must be at least 1.")


@dataclass(frozen=True)
class CircuitDiscoverResult(Result):
    node_scores: np.ndarray  # [layers, heads] softmax
    unique_counts: np.ndarray  # [layers, heads]
    edge_counts: np.ndarray  # [nodes, nodes]
    top_codes: tuple
    check: dict
    seconds: float
    n_used: int

    kind = "circuit_discover"

    def to_frame(self) -> pd.DataFrame:
        L, H = self.node_scores.shape
        return pd.DataFrame([{"node": f"L{l}H{h}", "layer": l, "head": h, "score": float(self.node_scores[l, h]),
                              "positive_only_codes": int(self.unique_counts[l, h]), "top_codes": self.top_codes[l * H + h]}
                             for l in range(L) for h in range(H)])

    def figures(self) -> dict:
        return {"node_scores": heatmap(self.unique_counts.astype(float),
                                       f"Discrete SAE: positive-only codes per head, task {self.params.task}"),
                "graph": circuit_graph(self.node_scores, self.edge_counts, None, self.top_codes)}


def sae_scores(model, pairs: attr.Pairs, p: CircuitDiscoverParams | None = None, **kw):
    """Run the discrete-SAE method: (node scores [L, H], unique counts [L, H], edge counts, top codes)."""
    from mechscope.saes import discrete

    p = p or CircuitDiscoverParams(**kw)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    cp, cn = sae_codes(model, pairs, p)
    counts = discrete.unique_positive_counts(cp, cn)
    labels = np.r_[np.ones(len(cp), bool), np.zeros(len(cn), bool)]
    return (discrete.softmax(counts).reshape(L, H), counts.reshape(L, H), discrete.edge_counts(cp, cn, p.n_latents),
            tuple(discrete.top_codes(np.concatenate([cp, cn]), labels)))


def sae_codes(model, pairs: attr.Pairs, p: CircuitDiscoverParams) -> tuple[np.ndarray, np.ndarray]:
    """The discrete codes [N, heads] of the positive (clean) and negative (corrupted) prompts."""
    from mechscope.saes import discrete

    iso = p.isometric and not p.shared
    pos = attr.head_vectors(model, pairs.clean, pairs.lengths, isometric=iso, positions=p.positions)
    neg = attr.head_vectors(model, pairs.corrupt, pairs.lengths, isometric=iso, positions=p.positions)
    x = torch.cat([pos, neg]).to(model.cfg.device)
    saes_ = discrete.train_head_saes(x, p.n_latents, p.l1, p.epochs, p.lr, p.shared, p.seed, p.n_train or None)
    codes = saes_.codes(x).numpy()
    return codes[: len(pos)], codes[len(pos):]


@analysis(CircuitDiscoverParams)
def circuit_discover(model, params: CircuitDiscoverParams) -> CircuitDiscoverResult:
    pairs, check = select_positive(model, task_pairs(model, load_circuit_task(params.task)), params.n_prompts)
    t0 = time.perf_counter()
    scores, counts, edges, codes = sae_scores(model, pairs, params)
    return CircuitDiscoverResult(model_id(model), params, scores, counts, edges, codes, check,
                                 time.perf_counter() - t0, len(pairs))


def circuit_graph(scores: np.ndarray, edges: np.ndarray | None, effects: np.ndarray | None, codes=None,
                  top: int = 20, top_edges: int = 30):
    """The circuit as a graph: layers top to bottom, the ``top`` heads by score as nodes sized by
    score, the strongest ``top_edges`` edges among them (weighted), hover with codes and patching."""
    import plotly.graph_objects as go

    L, H = scores.shape
    flat = scores.ravel()
    keep = np.argsort(-flat)[:top]
    xy = {int(i): (int(i) % H, int(i) // H) for i in keep}
    fig = go.Figure()
    if edges is not None and len(keep) > 1:
        sub = [(edges[a, b] + edges[b, a], a, b) for ai, a in enumerate(keep) for b in keep[ai + 1:]]
        sub = sorted((s for s in sub if s[0] > 0), reverse=True)[:top_edges]
        wmax = max([s[0] for s in sub], default=1)
        for w, a, b in sub:
            (x0, y0), (x1, y1) = xy[int(a)], xy[int(b)]
            fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="skip", showlegend=False,
                                     line={"width": 0.5 + 4 * w / wmax, "color": "rgba(100,100,160,0.5)"}))
    smax = flat[keep].max() if len(keep) else 1
    hover = []
    for i in keep:
        l, h = int(i) // H, int(i) % H
        t = f"L{l}H{h}<br>score {flat[i]:.3g}"
        if effects is not None:
            t += f"<br>patching effect {effects[l, h]:+.3f}"
        if codes is not None:
            t += f"<br>top codes {codes[int(i)]}"
        hover.append(t)
    fig.add_trace(go.Scatter(x=[xy[int(i)][0] for i in keep], y=[xy[int(i)][1] for i in keep], mode="markers+text",
                             text=[f"L{int(i) // H}H{int(i) % H}" for i in keep], textposition="middle right",
                             hovertext=hover, hoverinfo="text", showlegend=False,
                             marker={"size": [10 + 30 * flat[i] / (smax or 1) for i in keep], "color": "#d62728"}))
    fig.update_layout(title="Circuit (top heads by score; layers top to bottom)", xaxis={"title": "head", "range": [-0.5, H]},
                      yaxis={"title": "layer", "autorange": "reversed", "range": [-0.5, L - 0.5]}, height=600)
    return fig


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CircuitCompareParams(Params):
    """Every method on one task against the noising patching ground truth."""

    kind: ClassVar[str] = "circuit_compare"
    task: str = field(default="ioi", metadata={"help": "task: " + ", ".join(TASKS)})
    n_prompts: int = field(default=32, metadata={"help": "positive prompt pairs used"})
    batch_size: int = field(default=8, metadata={"help": "prompt pairs per batch"})
    thresholds: tuple[float, ...] = field(default=(0.01, 0.02, 0.05, 0.1), metadata={"help": "ground-truth thresholds on |effect|"})
    ig_steps: int = field(default=5, metadata={"help": "EAP-IG integration steps"})
    n_latents: int = field(default=200, metadata={"help": "latents of each SAE (reference 200)"})
    l1: float = field(default=0.02, metadata={"help": "SAE L1 coefficient (reference 0.02)"})
    epochs: int = field(default=500, metadata={"help": "SAE full-batch Adam steps (reference 500)"})
    shared: bool = field(default=True, metadata={"help": "one SAE shared by all heads on their d_model outputs (the reference); "
                                                         "off: per-head SAEs, one per head (ours)"})
    seed: int = field(default=0, metadata={"help": "SAE seed"})
    n_train: int = field(default=10, metadata={"help": "prompts the SAEs train on (reference 10; 0 = all)"})
    isometric: bool = field(default=True, metadata={"help": "per-head SAEs only: each head's output in an orthonormal basis of its "
                                                            "output space (d_head wide)"})
    sizes: tuple[int, ...] = field(default=(1, 2, 5, 10, 20, 40, 80), metadata={"help": "circuit sizes for faithfulness"})
    edge_top_n: int = field(default=10, metadata={"help": "edges: path-patch every pair among the top-N heads by |patching effect| (0 = no edges)"})
    edge_inputs: tuple[str, ...] = field(default=("qkv",), metadata={"help": "receiver inputs; the first is the edge ground truth (qkv, q, kv, ...)"})

    def __post_init__(self):
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        object.__setattr__(self, "sizes", tuple(int(s) for s in self.sizes))
        object.__setattr__(self, "edge_inputs", pp.check_inputs(self.edge_inputs))
        if self.edge_top_n < 0:
            raise InputError("edge_top_n must be 0 (no edges) or more.")
        if self.task not in TASKS:
            raise InputError(f"Unknown circuit task {self.task!r}: use one of {', '.join(TASKS)}.")
        if self.n_prompts < 1 or self.batch_size < 1 or self.ig_steps < 1:
            raise InputError("n_prompts, batch_size and ig_steps must be at least 1.")


@dataclass(frozen=True)
class CircuitCompareResult(Result):
    methods: tuple
    scores: np.ndarray  # [methods, layers, heads] (patching: |effect|; attributions: |estimate|)
    truth: np.ndarray  # [layers, heads] normalised noising patching effect
    mlp: np.ndarray  # [layers] normalised noising patching effect of each MLP
    edge_counts: np.ndarray  # discrete-SAE edge counts [nodes, nodes]
    top_codes: tuple
    seconds: dict
    passes: dict
    faithfulness: pd.DataFrame
    check: dict
    n_used: int
    edges: np.ndarray | None = None  # [E, 2] flat head indices (sender, receiver), layer × n_heads + head
    edge_truth: np.ndarray | None = None  # [len(edge_inputs), E] normalised path-patching effect
    edge_scores: np.ndarray | None = None  # [methods, E] each method's edge score (|estimate|, counts)

    kind = "circuit_compare"

    @property
    def has_edges(self) -> bool:
        return self.edges is not None and len(self.edges) > 0

    def pair_node_scores(self) -> np.ndarray:
        """[layers, heads]: the discrete SAE's top head pairs as node predictions (the reference's
        "edge AUC" protocol, :func:`saes.discrete.pair_node_counts`)."""
        from mechscope.saes import discrete

        return discrete.pair_node_counts(self.edge_counts).reshape(self.truth.shape)

    def auc_table(self, anchors: bool = False) -> pd.DataFrame:
        """Node and edge ROC-AUC per method and threshold (edges: |path-patching effect| ≥ t among
        the top-N heads' pairs; ``pair_node_auc``, discrete SAE only: the node AUC of its top head
        pairs, the reference's "edge AUC"); ``anchors`` appends the papers' numbers for this task
        (their models: GPT-2 small, docstring on attn-only-4l)."""
        rows = []
        pair = self.pair_node_scores() if "discrete_sae" in self.methods else None
        for mi, m in enumerate(self.methods):
            for t in self.params.thresholds:
                gt = np.abs(self.truth) >= t
                row = {"method": m, "task": self.params.task, "threshold": t, "gt_size": int(gt.sum()),
                       "node_auc": roc_auc(self.scores[mi], gt)}
                if m == "discrete_sae":
                    row["pair_node_auc"] = roc_auc(pair, gt)
                if self.has_edges:
                    ge = np.abs(self.edge_truth[0]) >= t
                    row.update(gt_edges=int(ge.sum()), n_edges=len(self.edges), edge_auc=roc_auc(self.edge_scores[mi], ge))
                rows.append({**row, "n_prompts": self.n_used})
        if anchors:
            rows += [{"method": f"{a['method']}, {a['model']} — theirs", "task": a["task"], "threshold": _NAN,
                      "node_auc": a["node_auc"], "pair_node_auc": a["pair_node_auc"], "edge_auc": a["edge_auc"]}
                     for a in ANCHORS if a["task"] == self.params.task]
        return pd.DataFrame(rows)

    def to_frame(self) -> pd.DataFrame:
        return self.auc_table()

    def edge_frame(self) -> pd.DataFrame:
        """One row per scored edge: its path-patching effect per receiver-input group and every
        method's score."""
        if not self.has_edges:
            return pd.DataFrame()
        H = self.truth.shape[1]
        rows = []
        for e, (a, b) in enumerate(self.edges):
            row = {"sender": f"L{a // H}H{a % H}", "receiver": f"L{b // H}H{b % H}"}
            row.update({f"effect_{g}": float(self.edge_truth[gi, e]) for gi, g in enumerate(self.params.edge_inputs)})
            row.update({m: float(self.edge_scores[mi, e]) for mi, m in enumerate(self.methods)})
            rows.append(row)
        return pd.DataFrame(rows)

    def edge_matrix(self, method: str) -> np.ndarray | None:
        """[nodes, nodes] edge weights of ``method`` for the circuit graph: the scored edges (the
        discrete SAE: its co-occurrence counts over all pairs); None without edges."""
        if method == "discrete_sae":
            return self.edge_counts
        if not self.has_edges:
            return None
        n = self.truth.size
        out = np.zeros((n, n))
        out[self.edges[:, 0], self.edges[:, 1]] = self.edge_scores[self.methods.index(method)]
        return out

    def timing_table(self) -> pd.DataFrame:
        """Seconds per method (this run; ``…_edges``: the edge scores) and passes."""
        return pd.DataFrame([{"method": m, "seconds": sec, **{k: v for k, v in self.passes[m].items() if k != "note"}}
                             for m, sec in self.seconds.items()])

    def missed(self, method: str = "discrete_sae", threshold: float | None = None, k: int = 10) -> pd.DataFrame:
        """Ground-truth heads that ``method`` ranks lowest (where it misses)."""
        t = threshold if threshold is not None else self.params.thresholds[len(self.params.thresholds) // 2]
        mi = self.methods.index(method)
        L, H = self.truth.shape
        rank = (-self.scores[mi]).ravel().argsort().argsort().reshape(L, H) + 1
        rows = [{"node": f"L{l}H{h}", "effect": float(self.truth[l, h]), "rank": int(rank[l, h])}
                for l in range(L) for h in range(H) if abs(self.truth[l, h]) >= t]
        return pd.DataFrame(rows).sort_values("rank", ascending=False).head(k) if rows else pd.DataFrame(rows)

    def figures(self) -> dict:
        import plotly.express as px
        import plotly.graph_objects as go

        t = self.params.thresholds[len(self.params.thresholds) // 2]
        gt = np.abs(self.truth) >= t
        roc = go.Figure()
        for mi, m in enumerate(self.methods):
            fpr, tpr = roc_curve(self.scores[mi], gt)
            roc.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{m} (AUC {roc_auc(self.scores[mi], gt):.3f})"))
        roc.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, showlegend=False))
        roc.update_layout(title=f"Node ROC vs patching ground truth (|effect| ≥ {t:g}; {int(gt.sum())} heads), task "
                                f"{self.params.task}", xaxis_title="false-positive rate", yaxis_title="true-positive rate")
        faith = px.line(self.faithfulness, x="size", y="recovered", color="method", line_dash="mode", markers=True,
                        title="Faithfulness: logit difference recovered (fraction of clean) vs circuit size")
        sae = self.methods.index("discrete_sae") if "discrete_sae" in self.methods else 0
        figs = {"roc": roc,
                "patching": heatmap(self.truth, f"Patching ground truth (noising), task {self.params.task}"),
                "faithfulness": faith,
                "graph": circuit_graph(self.scores[sae], self.edge_counts, self.truth, self.top_codes)}
        if self.has_edges:
            ge = np.abs(self.edge_truth[0]) >= t
            er = go.Figure()
            for mi, m in enumerate(self.methods):
                fpr, tpr = roc_curve(self.edge_scores[mi], ge)
                er.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{m} (AUC {roc_auc(self.edge_scores[mi], ge):.3f})"))
            er.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, showlegend=False))
            er.update_layout(title=f"Edge ROC vs path patching (|effect| ≥ {t:g}; {int(ge.sum())} of {len(ge)} edges among the "
                                   f"top-{self.params.edge_top_n} heads), task {self.params.task}",
                             xaxis_title="false-positive rate", yaxis_title="true-positive rate")
            figs["edge_roc"] = er
        return figs


def faithfulness(model, pairs: attr.Pairs, rankings: dict[str, np.ndarray], sizes, means: torch.Tensor,
                 batch_size: int = 16) -> pd.DataFrame:
    """Logit difference (as a fraction of the clean one) when every head outside the top-k of
    each ranking is mean-ablated ("keep"), and when the top-k alone is ("ablate")."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    clean = attr.mean_ablated_metric(model, pairs, np.zeros((L, H), bool), means, batch_size=batch_size)
    rows = []
    for m, score in rankings.items():
        order = np.argsort(-score.ravel(), kind="stable")
        for k in sizes:
            k = min(k, L * H)
            circ = np.zeros(L * H, bool)
            circ[order[:k]] = True
            circ = circ.reshape(L, H)
            for mode, ablate in (("keep", ~circ), ("ablate", circ)):
                ld = attr.mean_ablated_metric(model, pairs, ablate, means, batch_size=batch_size)
                rows.append({"method": m, "size": k, "mode": mode, "logit_diff": ld, "recovered": ld / clean})
    return pd.DataFrame(rows)


@analysis(CircuitCompareParams)
def circuit_compare(model, params: CircuitCompareParams, progress: Callable[[int, int], None] | None = None) -> CircuitCompareResult:
    pairs, check = select_positive(model, task_pairs(model, load_circuit_task(params.task)), params.n_prompts)
    if check["frac_positive"] < MIN_FRAC_POSITIVE or check["mean_ld_clean"] <= 0:
        raise InputError(f"The model does not do task {params.task!r} (fraction positive {check['frac_positive']:.2f}, "
                         f"mean logit difference {check['mean_ld_clean']:.2f}): it is reported, not scored.")
    seconds, passes, scores = {}, {}, {}
    t0 = time.perf_counter()
    eff = attr.patch_nodes(model, pairs, "noising", params.batch_size, progress=progress)
    seconds["patching"] = time.perf_counter() - t0
    passes["patching"] = eff.passes
    truth, mlp = eff.normalised()
    scores["patching"] = np.abs(truth)
    for name, steps in (("attribution_patching", 1), ("eap_ig", params.ig_steps)):
        t0 = time.perf_counter()
        a = attr.attribution_nodes(model, pairs, "noising", steps, params.batch_size)
        seconds[name] = time.perf_counter() - t0
        passes[name] = a.passes
        scores[name] = np.abs(a.normalised()[0])
    t0 = time.perf_counter()
    sp = CircuitDiscoverParams(task=params.task, n_prompts=params.n_prompts, n_latents=params.n_latents, l1=params.l1,
                               epochs=params.epochs, shared=params.shared, seed=params.seed, n_train=params.n_train,
                               isometric=params.isometric)
    node, _, edges, codes = sae_scores(model, pairs, sp)
    seconds["discrete_sae"] = time.perf_counter() - t0
    passes["discrete_sae"] = {"forward_prompt_sets": 2, "backward_prompt_sets": 0}
    scores["discrete_sae"] = node
    means = attr.head_means(model, pairs.corrupt, pairs.lengths)
    faith = faithfulness(model, pairs, scores, params.sizes, means)
    methods = tuple(scores)
    edge_list, edge_truth, edge_scores = edge_ground_truth_and_scores(model, pairs, params, truth, edges, seconds, passes,
                                                                      progress)
    return CircuitCompareResult(model_id(model), params, methods, np.stack([scores[m] for m in methods]), truth, mlp,
                                edges, codes, seconds, passes, faith, check, len(pairs), edge_list,
                                edge_truth, None if edge_scores is None else np.stack([edge_scores[m] for m in methods]))


def edge_ground_truth_and_scores(model, pairs: attr.Pairs, params: CircuitCompareParams, truth: np.ndarray,
                                 sae_edges: np.ndarray, seconds: dict, passes: dict, progress=None):
    """Path patching of every pair among the top-``edge_top_n`` heads by |truth| (the edge ground
    truth) and every method's score of those edges; fills ``seconds`` / ``passes`` (``…_edges``).
    Returns ([E, 2] flat indices, [groups, E] normalised effects, {method: [E] scores}) or Nones."""
    H = truth.shape[1]
    order = np.argsort(-np.abs(truth).ravel(), kind="stable")[: params.edge_top_n]
    edge_list = pp.edges_among([divmod(int(i), H) for i in order])
    if not edge_list:
        return None, None, None
    flat = np.array([[s[0] * H + s[1], r[0] * H + r[1]] for s, r in edge_list], dtype=np.int64)
    t0 = time.perf_counter()
    rows = 128 if str(model.cfg.device) == "cpu" else 1024  # rows per path-patching forward (edges × prompts)
    gt = pp.path_patch_edges(model, pairs, edge_list, "noising", params.edge_inputs, params.batch_size, rows, progress)
    seconds["patching_edges"] = time.perf_counter() - t0
    passes["patching_edges"] = gt.passes
    edge_truth = gt.normalised()
    scores = {"patching": np.abs(edge_truth[0])}
    for name, steps in (("attribution_patching", 1), ("eap_ig", params.ig_steps)):
        t0 = time.perf_counter()
        a = pp.attribution_edges(model, pairs, edge_list, "noising", steps, params.edge_inputs[:1], params.batch_size)
        seconds[f"{name}_edges"] = time.perf_counter() - t0
        passes[f"{name}_edges"] = a.passes
        scores[name] = np.abs(a.normalised()[0])
    scores["discrete_sae"] = sae_edges[flat[:, 0], flat[:, 1]].astype(np.float64)
    return flat, edge_truth, scores
