"""The papers' published circuit-discovery numbers, shown as "theirs" beside ours (docs/circuits.md#published-anchors).

Each is on its own model and published circuit: IOI and greater-than on GPT-2 small, docstring
on attn-only-4l (a 4-layer attention-only model). O'Neill & Bui's "edge AUC" is a *node* AUC:
the heads of the top head pairs (:func:`saes.discrete.pair_node_counts`) against the node
circuit — here ``pair_node_auc``; ACDC's is over the published circuit's edges (``edge_auc``).
"""

from __future__ import annotations

_NAN = float("nan")

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
