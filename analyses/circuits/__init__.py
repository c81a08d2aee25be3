"""Circuit discovery against a patching ground truth (docs/circuits.md).

Tasks (``data/tasks/circuit_*.jsonl``, :mod:`.tasks`): clean / corrupted prompt pairs with
single-token answers and distractors; metric = logit difference at the last position.

* :func:`circuit_patch` (:mod:`.patch`) — the ground truth: activation patching of every head
  and MLP layer (noising: corrupted → clean; denoising: clean → corrupted), as the fraction of
  the clean–corrupted logit-difference gap each node moves.
* :func:`circuit_discover` (:mod:`.discover`) — the discrete-SAE method alone (O'Neill & Bui
  2024, :mod:`.sae`; by default the reference's one SAE over all heads' d_model outputs).
* :func:`circuit_compare` (:mod:`.compare`) — every method of the registry :data:`METHODS`
  (:mod:`.methods`: patching, attribution patching, EAP-IG, the discrete SAE) on one task
  against the noising ground truth: node ROC-AUC (:mod:`.roc`) at thresholds fixed in advance,
  runtime and passes, faithfulness curves, and edge ROC-AUC against path patching among the
  top heads; the papers' numbers are :data:`ANCHORS` (:mod:`.anchors`).
* :func:`circuit_edges` (:mod:`.edges`) — edge circuits of the whole residual graph (input, every
  head's q/k/v inputs, MLPs, logits) scored as the MIB circuit track scores them: faithfulness
  curves over the top x% edges, CPR and CMD with bootstrap intervals, a random baseline; circuit
  files in MIB's format (:mod:`.mib`).

Ground-truth circuits are published only for GPT-2 small (IOI, greater-than) and attn-only-4l
(docstring); on other models the ground truth is derived here by activation patching of the
model being studied, so the papers' numbers are not comparable ground truth. The ground truth
is over heads only (the discrete-SAE method scores heads only); MLP effects are reported beside
it. Every method uses the same selected positive prompt pairs.
"""

from mechscope.analyses.circuits.anchors import ANCHORS
from mechscope.analyses.circuits.compare import circuit_compare, edge_ground_truth_and_scores, faithfulness, node_scores
from mechscope.analyses.circuits.discover import circuit_discover
from mechscope.analyses.circuits.edges import (EDGE_METHODS, PERCENTAGES, EdgeCircuitParams, EdgeCircuitResult, areas,
                                               circuit_edges, edge_circuits_on)
from mechscope.analyses.circuits.figures import circuit_graph, edge_circuit_graph, faithfulness_curves, heatmap
from mechscope.analyses.circuits.mib import MIBCircuit, export_circuit, import_circuit, make_circuit
from mechscope.analyses.circuits.methods import METHODS, CircuitMethod, EdgeScores, NodeScores, ground_truth, register
from mechscope.analyses.circuits.params import CircuitCompareParams, CircuitDiscoverParams, CircuitPatchParams
from mechscope.analyses.circuits.patch import circuit_patch
from mechscope.analyses.circuits.results import CircuitCompareResult, CircuitDiscoverResult, CircuitPatchResult
from mechscope.analyses.circuits.roc import roc_auc, roc_curve
from mechscope.analyses.circuits.sae import SAE_METHOD, sae_codes, sae_scores
from mechscope.analyses.circuits.tasks import ALL_TASKS, MIB_TASKS, MIN_FRAC_POSITIVE, TASKS, load_circuit_task, positive_pairs, select_positive, task_pairs

__all__ = [
    "EDGE_METHODS", "PERCENTAGES", "EdgeCircuitParams", "EdgeCircuitResult", "MIBCircuit", "areas", "circuit_edges",
    "edge_circuit_graph", "edge_circuits_on", "export_circuit", "faithfulness_curves", "import_circuit", "make_circuit",
    "ALL_TASKS", "MIB_TASKS", "ANCHORS", "METHODS", "MIN_FRAC_POSITIVE", "SAE_METHOD", "TASKS",
    "CircuitCompareParams", "CircuitCompareResult", "CircuitDiscoverParams", "CircuitDiscoverResult", "CircuitMethod",
    "CircuitPatchParams", "CircuitPatchResult", "EdgeScores", "NodeScores",
    "circuit_compare", "circuit_discover", "circuit_graph", "circuit_patch", "edge_ground_truth_and_scores",
    "faithfulness", "ground_truth", "heatmap", "load_circuit_task", "node_scores", "positive_pairs", "register",
    "roc_auc", "roc_curve", "sae_codes", "sae_scores", "select_positive", "task_pairs",
]
