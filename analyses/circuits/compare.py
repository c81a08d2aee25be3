"""``circuit_compare``: every registered method on one task against the patching ground truth (docs/circuits.md#scoring-against-the-ground-truth).

Nodes: each method's head scores against the noising patching effects, by ROC-AUC at
thresholds fixed in advance (a head is in the ground-truth circuit when |normalised effect| ≥
t), with runtime, passes and faithfulness curves. Edges (head → head): path patching of every
ordered pair among the ``edge_top_n`` heads with the largest |node effect| is the ground truth
(Wang et al. 2022; Goldowsky-Dill et al. 2023), and every method scores the same edges.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pandas as pd
import torch

from mechscope.analyses.circuits.methods import METHODS, NodeScores, ground_truth
from mechscope.analyses.circuits.params import CircuitCompareParams
from mechscope.analyses.circuits.results import CircuitCompareResult
from mechscope.analyses.circuits.tasks import MIN_FRAC_POSITIVE, positive_pairs
from mechscope.probes import attribution as attr
from mechscope.probes import path_patching as pp
from mechscope.probes.errors import InputError
from mechscope.probes.models import model_id
from mechscope.probes.results import analysis


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


def node_scores(model, pairs: attr.Pairs, params: CircuitCompareParams, seconds: dict, passes: dict,
                progress=None) -> dict[str, NodeScores]:
    """Every registered method's node scores; fills ``seconds`` / ``passes``."""
    runs = {}
    for name, method in METHODS.items():
        t0 = time.perf_counter()
        runs[name] = method.nodes(model, pairs, params, progress)
        seconds[name] = time.perf_counter() - t0
        passes[name] = runs[name].passes
    return runs


def edge_ground_truth_and_scores(model, pairs: attr.Pairs, params: CircuitCompareParams, truth: np.ndarray,
                                 runs: dict[str, NodeScores], seconds: dict, passes: dict, progress=None):
    """Path patching of every pair among the top-``edge_top_n`` heads by |truth| (the edge ground
    truth) and every registered method's score of those edges (``runs``: the methods' node
    scores, which some edge scores are read from); fills ``seconds`` / ``passes`` (``…_edges``).
    Returns ([E, 2] flat indices, [groups, E] normalised effects, {method: [E] scores}) or Nones."""
    H = truth.shape[1]
    order = np.argsort(-np.abs(truth).ravel(), kind="stable")[: params.edge_top_n]
    edge_list = pp.edges_among([divmod(int(i), H) for i in order])
    if not edge_list:
        return None, None, None
    flat = np.array([[s[0] * H + s[1], r[0] * H + r[1]] for s, r in edge_list], dtype=np.int64)
    gt = ground_truth()
    scored = {}
    for method in [gt] + [m for m in METHODS.values() if m is not gt]:
        t0 = time.perf_counter()
        scored[method.name] = method.edges(model, pairs, params, edge_list, flat, runs.get(method.name), progress)
        if scored[method.name].passes is not None:
            seconds[f"{method.name}_edges"] = time.perf_counter() - t0
            passes[f"{method.name}_edges"] = scored[method.name].passes
    return flat, scored[gt.name].effects, {name: scored[name].scores for name in METHODS}


@analysis(CircuitCompareParams)
def circuit_compare(model, params: CircuitCompareParams, progress: Callable[[int, int], None] | None = None) -> CircuitCompareResult:
    """Every registered method (:data:`analyses.circuits.methods.METHODS`) on one task against
    the noising patching ground truth, nodes and edges; a task the model does not do is refused."""
    pairs, check = positive_pairs(model, params.task, params.n_prompts)
    if check["frac_positive"] < MIN_FRAC_POSITIVE or check["mean_ld_clean"] <= 0:
        raise InputError(f"The model does not do task {params.task!r} (fraction positive {check['frac_positive']:.2f}, "
                         f"mean logit difference {check['mean_ld_clean']:.2f}): it is reported, not scored.")
    seconds, passes = {}, {}
    runs = node_scores(model, pairs, params, seconds, passes, progress)
    truth, mlp = runs[ground_truth().name].effects
    means = attr.head_means(model, pairs.corrupt, pairs.lengths)
    faith = faithfulness(model, pairs, {name: run.scores for name, run in runs.items()}, params.sizes, means)
    methods = tuple(runs)
    edges, edge_truth, edge_scores = edge_ground_truth_and_scores(model, pairs, params, truth, runs, seconds, passes,
                                                                  progress)
    sae = next((run for run in runs.values() if run.edge_counts is not None), None)
    return CircuitCompareResult(
        model_id=model_id(model), params=params, methods=methods, scores=np.stack([runs[m].scores for m in methods]),
        truth=truth, mlp=mlp, edge_counts=None if sae is None else sae.edge_counts,
        top_codes=() if sae is None else sae.top_codes, seconds=seconds, passes=passes, faithfulness=faith,
        check=check, n_used=len(pairs), edges=edges, edge_truth=edge_truth,
        edge_scores=None if edge_scores is None else np.stack([edge_scores[m] for m in methods]))
