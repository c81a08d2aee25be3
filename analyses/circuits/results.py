"""Results of the circuit analyses: patching effects, discrete-SAE scores, the method comparison."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mechscope.analyses.circuits.anchors import ANCHORS
from mechscope.analyses.circuits.figures import circuit_graph, heatmap
from mechscope.analyses.circuits.roc import roc_auc, roc_curve
from mechscope.analyses.circuits.sae import SAE_METHOD
from mechscope.probes.results import Result
from mechscope.probes.hooknames import head_label


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
                    rows.append({"direction": d, "node": head_label(l, h), "layer": l, "head": h, "effect": float(self.heads[di, l, h])})
                rows.append({"direction": d, "node": f"L{l}MLP", "layer": l, "head": -1, "effect": float(self.mlp[di, l])})
        return pd.DataFrame(rows)

    def figures(self) -> dict:
        return {f"patching_{d}": heatmap(self.heads[i], f"Patching ({d}): fraction of the logit-difference gap, "
                                          f"task {self.params.task}") for i, d in enumerate(self.directions)}


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
        return pd.DataFrame([{"node": head_label(l, h), "layer": l, "head": h, "score": float(self.node_scores[l, h]),
                              "positive_only_codes": int(self.unique_counts[l, h]), "top_codes": self.top_codes[l * H + h]}
                             for l in range(L) for h in range(H)])

    def figures(self) -> dict:
        return {"node_scores": heatmap(self.unique_counts.astype(float),
                                       f"Discrete SAE: positive-only codes per head, task {self.params.task}"),
                "graph": circuit_graph(self.node_scores, self.edge_counts, None, self.top_codes)}


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
        pair = self.pair_node_scores() if SAE_METHOD in self.methods else None
        for mi, m in enumerate(self.methods):
            for t in self.params.thresholds:
                gt = np.abs(self.truth) >= t
                row = {"method": m, "task": self.params.task, "threshold": t, "gt_size": int(gt.sum()),
                       "node_auc": roc_auc(self.scores[mi], gt)}
                if m == SAE_METHOD:
                    row["pair_node_auc"] = roc_auc(pair, gt)
                if self.has_edges:
                    ge = np.abs(self.edge_truth[0]) >= t
                    row.update(gt_edges=int(ge.sum()), n_edges=len(self.edges), edge_auc=roc_auc(self.edge_scores[mi], ge))
                rows.append({**row, "n_prompts": self.n_used})
        if anchors:
            rows += [{"method": f"{a['method']}, {a['model']} — theirs", "task": a["task"], "threshold": float("nan"),
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
            row = {"sender": head_label(a // H, a % H), "receiver": head_label(b // H, b % H)}
            row.update({f"effect_{g}": float(self.edge_truth[gi, e]) for gi, g in enumerate(self.params.edge_inputs)})
            row.update({m: float(self.edge_scores[mi, e]) for mi, m in enumerate(self.methods)})
            rows.append(row)
        return pd.DataFrame(rows)

    def edge_matrix(self, method: str) -> np.ndarray | None:
        """[nodes, nodes] edge weights of ``method`` for the circuit graph: the scored edges (the
        discrete SAE: its co-occurrence counts over all pairs); None without edges."""
        if method == SAE_METHOD:
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

    def missed(self, method: str = SAE_METHOD, threshold: float | None = None, k: int = 10) -> pd.DataFrame:
        """Ground-truth heads that ``method`` ranks lowest (where it misses)."""
        t = threshold if threshold is not None else self.params.thresholds[len(self.params.thresholds) // 2]
        mi = self.methods.index(method)
        L, H = self.truth.shape
        rank = (-self.scores[mi]).ravel().argsort().argsort().reshape(L, H) + 1
        rows = [{"node": head_label(l, h), "effect": float(self.truth[l, h]), "rank": int(rank[l, h])}
                for l in range(L) for h in range(H) if abs(self.truth[l, h]) >= t]
        return pd.DataFrame(rows).sort_values("rank", ascending=False).head(k) if rows else pd.DataFrame(rows)

    def figures(self) -> dict:
        import plotly.express as px

        t = self.params.thresholds[len(self.params.thresholds) // 2]
        gt = np.abs(self.truth) >= t
        roc = _roc_figure(self.methods, self.scores, gt, f"Node ROC vs patching ground truth (|effect| ≥ {t:g}; "
                                                             f"{int(gt.sum())} heads), task {self.params.task}")
        faith = px.line(self.faithfulness, x="size", y="recovered", color="method", line_dash="mode", markers=True,
                        title="Faithfulness: logit difference recovered (fraction of clean) vs circuit size")
        sae = self.methods.index(SAE_METHOD) if SAE_METHOD in self.methods else 0
        figs = {"roc": roc,
                "patching": heatmap(self.truth, f"Patching ground truth (noising), task {self.params.task}"),
                "faithfulness": faith,
                "graph": circuit_graph(self.scores[sae], self.edge_counts, self.truth, self.top_codes)}
        if self.has_edges:
            ge = np.abs(self.edge_truth[0]) >= t
            figs["edge_roc"] = _roc_figure(
                self.methods, self.edge_scores, ge, f"Edge ROC vs path patching (|effect| ≥ {t:g}; {int(ge.sum())} of "
                f"{len(ge)} edges among the top-{self.params.edge_top_n} heads), task {self.params.task}")
        return figs


def _roc_figure(methods, scores, truth, title: str):
    """One ROC curve per method (its AUC in the legend) against the boolean ground truth."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for mi, m in enumerate(methods):
        fpr, tpr = roc_curve(scores[mi], truth)
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{m} (AUC {roc_auc(scores[mi], truth):.3f})"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, showlegend=False))
    return fig.update_layout(title=title, xaxis_title="false-positive rate", yaxis_title="true-positive rate")
