"""The circuit-discovery methods that :func:`analyses.circuits.circuit_compare` compares, as a registry.

A method scores every head of the model (node scores, larger = more in the circuit) and any
given list of head pairs (edge scores). Exactly one method is the ground truth: its node run
also returns the normalised patching effects and its edge run the normalised path-patching
effects the others are scored against. Adding a method is one :func:`register` call; the
comparison runs every registered method in registration order.

* ``patching`` — activation patching, noising (the ground truth; edges: path patching);
* ``attribution_patching`` — AtP: one forward + backward (Nanda 2023; Syed et al. 2023);
* ``eap_ig`` — AtP with integrated gradients over the input embeddings (Hanna et al. 2024);
* ``discrete_sae`` — O'Neill & Bui 2024 (:mod:`analyses.circuits.sae`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from mechscope.analyses.circuits.params import CircuitCompareParams
from mechscope.analyses.circuits.sae import SAE_METHOD, sae_scores
from mechscope.probes import attribution as attr
from mechscope.probes import path_patching as pp

Progress = Callable[[int, int], None] | None


@dataclass(frozen=True)
class NodeScores:
    """One method's node scores on the selected prompt pairs."""

    scores: np.ndarray  # [layers, heads], larger = more in the circuit
    passes: dict  # forward / backward passes (prompt sets or rows)
    effects: tuple[np.ndarray, np.ndarray] | None = None  # ground truth: normalised effects (heads [L, H], MLPs [L])
    edge_counts: np.ndarray | None = None  # discrete SAE: co-occurrence counts [nodes, nodes]
    top_codes: tuple = ()  # discrete SAE: each head's most frequent codes


@dataclass(frozen=True)
class EdgeScores:
    """One method's scores of the given edges."""

    scores: np.ndarray  # [E]
    passes: dict | None  # None: read off the node run (no pass of its own, not timed)
    effects: np.ndarray | None = None  # ground truth: [receiver-input groups, E] normalised path-patching effects


@dataclass(frozen=True)
class CircuitMethod:
    """A compared method: ``nodes(model, pairs, params, progress)`` → :class:`NodeScores`;
    ``edges(model, pairs, params, edge_list, flat, node_scores, progress)`` → :class:`EdgeScores`
    (``edge_list``: ((sender layer, head), (receiver layer, head)) pairs, ``flat``: [E, 2] flat
    head indices, layer × n_heads + head)."""

    name: str
    description: str
    nodes: Callable[..., NodeScores]
    edges: Callable[..., EdgeScores]
    ground_truth: bool = False


#: name → method, in the order the comparison runs and reports them
METHODS: dict[str, CircuitMethod] = {}


def register(method: CircuitMethod) -> CircuitMethod:
    if method.name in METHODS:
        raise ValueError(f"Circuit method {method.name!r} is registered twice.")
    if method.ground_truth and any(m.ground_truth for m in METHODS.values()):
        raise ValueError("Only one circuit method can be the ground truth.")
    METHODS[method.name] = method
    return method


def ground_truth() -> CircuitMethod:
    return next(m for m in METHODS.values() if m.ground_truth)


# ---------------------------------------------------------------------------------------------
# activation patching: the ground truth


def _patching_nodes(model, pairs: attr.Pairs, params: CircuitCompareParams, progress: Progress = None) -> NodeScores:
    eff = attr.patch_nodes(model, pairs, "noising", params.batch_size, progress=progress)
    truth, mlp = eff.normalised()
    return NodeScores(scores=np.abs(truth), passes=eff.passes, effects=(truth, mlp))


def _path_patching_edges(model, pairs: attr.Pairs, params: CircuitCompareParams, edge_list, flat,
                         run: NodeScores | None = None, progress: Progress = None) -> EdgeScores:
    rows = 128 if str(model.cfg.device) == "cpu" else 1024  # rows per path-patching forward (edges × prompts)
    gt = pp.path_patch_edges(model, pairs, edge_list, "noising", params.edge_inputs, params.batch_size, rows, progress)
    effects = gt.normalised()
    return EdgeScores(scores=np.abs(effects[0]), passes=gt.passes, effects=effects)


register(CircuitMethod("patching", "activation patching, noising: the fraction of the logit-difference gap a node moves "
                                   "(edges: path patching)", _patching_nodes, _path_patching_edges, ground_truth=True))


# ---------------------------------------------------------------------------------------------
# attribution patching and EAP-IG: gradient × activation difference


def _attribution(steps: Callable[[CircuitCompareParams], int]):
    def nodes(model, pairs: attr.Pairs, params: CircuitCompareParams, progress: Progress = None) -> NodeScores:
        a = attr.attribution_nodes(model, pairs, "noising", steps(params), params.batch_size)
        return NodeScores(scores=np.abs(a.normalised()[0]), passes=a.passes)

    def edges(model, pairs: attr.Pairs, params: CircuitCompareParams, edge_list, flat, run: NodeScores | None = None,
              progress: Progress = None) -> EdgeScores:
        a = pp.attribution_edges(model, pairs, edge_list, "noising", steps(params), params.edge_inputs[:1], params.batch_size)
        return EdgeScores(scores=np.abs(a.normalised()[0]), passes=a.passes)

    return nodes, edges


register(CircuitMethod("attribution_patching", "attribution patching (AtP): one backward pass at the clean run",
                       *_attribution(lambda p: 1)))
register(CircuitMethod("eap_ig", "EAP-IG: the gradient averaged over ig_steps points from the corrupted to the clean input",
                       *_attribution(lambda p: p.ig_steps)))


# ---------------------------------------------------------------------------------------------
# the discrete SAE


def _sae_nodes(model, pairs: attr.Pairs, params: CircuitCompareParams, progress: Progress = None) -> NodeScores:
    node, _, edges, codes = sae_scores(model, pairs, params.discover_params())
    return NodeScores(scores=node, passes={"forward_prompt_sets": 2, "backward_prompt_sets": 0}, edge_counts=edges,
                      top_codes=codes)


def _sae_edges(model, pairs: attr.Pairs, params: CircuitCompareParams, edge_list, flat, run: NodeScores | None = None,
               progress: Progress = None) -> EdgeScores:
    return EdgeScores(scores=run.edge_counts[flat[:, 0], flat[:, 1]].astype(np.float64), passes=None)


register(CircuitMethod(SAE_METHOD, "discrete SAE (O'Neill & Bui): positive-only codes per head, softmaxed; edges: "
                                   "positive-only code co-occurrences", _sae_nodes, _sae_edges))
