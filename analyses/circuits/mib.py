"""Circuit files in the MIB circuit-track format (Mueller et al. 2025; the ``Graph.to_json`` /
``to_pt`` files of EAP-IG that the benchmark's evaluation reads).

JSON: ``{"cfg": {"n_layers", "n_heads", "parallel_attn_mlp", "d_model"}, "nodes": {name:
{"in_graph": bool}}, "edges": {name: {"score": float, "in_graph": bool}}}`` with node names
``input``, ``a{l}.h{h}``, ``m{l}``, ``logits`` and edge names ``"a0.h1->a2.h3<q>"`` /
``"a0.h1->m2"`` / ``"m3->logits"``. ``.pt``: a dict of ``cfg``, ``src_nodes``, ``dst_nodes``
(the forward and backward node names in index order), ``edges_scores`` and ``edges_in_graph``
([n_src, n_dst] tensors) and ``nodes_in_graph`` ([n_src]). Scores follow the benchmark's
sign: the estimated loss of the task metric when the edge is ablated (positive = helps).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mechscope.probes.edge_attribution import EdgeGraph, prune
from mechscope.probes.errors import InputError


@dataclass(frozen=True)
class MIBCircuit:
    """A circuit of an :class:`EdgeGraph`: edge scores and kept edges [n_forward, n_backward],
    kept upstream nodes [n_forward]."""

    graph: EdgeGraph
    scores: np.ndarray
    in_graph: np.ndarray
    nodes: np.ndarray


def make_circuit(graph: EdgeGraph, scores: np.ndarray, in_graph: np.ndarray) -> MIBCircuit:
    """A circuit from scores and a kept-edge mask (pruned as MIB prunes)."""
    edges, nodes = prune(graph, in_graph)
    return MIBCircuit(graph, np.where(graph.real, np.asarray(scores, dtype=np.float64), 0.0), edges, nodes)


def _cfg(graph: EdgeGraph, d_model: int) -> dict:
    return {"n_layers": graph.n_layers, "n_heads": graph.n_heads, "parallel_attn_mlp": False, "d_model": int(d_model)}


def export_circuit(circuit: MIBCircuit, path, d_model: int) -> Path:
    """Write ``circuit`` to ``path`` (``.json`` or ``.pt``, MIB's two formats)."""
    path = Path(path)
    g = circuit.graph
    if not g.mlp:
        raise InputError("MIB circuit files describe models with MLPs; this graph is attention-only.")
    cfg = _cfg(g, d_model)
    if path.suffix == ".json":
        nodes = {name: {"in_graph": bool(circuit.nodes[i])} for i, name in enumerate(g.forward_names)}
        nodes["logits"] = {"in_graph": True}
        names = g.edge_names()
        idx = list(zip(*np.nonzero(g.real)))
        edges = {n: {"score": float(circuit.scores[i, j]), "in_graph": bool(circuit.in_graph[i, j])}
                 for n, (i, j) in zip(names, idx)}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"cfg": cfg, "nodes": nodes, "edges": edges}))
        tmp.replace(path)
    elif path.suffix == ".pt":
        torch.save({"cfg": cfg, "src_nodes": g.forward_names, "dst_nodes": g.backward_names,
                    "edges_scores": torch.tensor(circuit.scores, dtype=torch.float32),
                    "edges_in_graph": torch.tensor(circuit.in_graph), "nodes_in_graph": torch.tensor(circuit.nodes)}, path)
    else:
        raise InputError(f"A MIB circuit file ends in .json or .pt, not {path.suffix or 'nothing'!r}.")
    return path


def _graph_of(cfg, model_graph: EdgeGraph | None) -> EdgeGraph:
    try:
        g = EdgeGraph(int(cfg["n_layers"]), int(cfg["n_heads"]), True)
    except (KeyError, TypeError, ValueError):
        raise InputError("Not a MIB circuit file: its 'cfg' lacks n_layers / n_heads.") from None
    if cfg.get("parallel_attn_mlp"):
        raise InputError("Circuits of parallel attention/MLP models are not supported.")
    if model_graph is not None and (g.n_layers, g.n_heads, g.mlp) != (model_graph.n_layers, model_graph.n_heads, model_graph.mlp):
        raise InputError(f"The circuit is for {g.n_layers} layers × {g.n_heads} heads; the model has "
                         f"{model_graph.n_layers} × {model_graph.n_heads}{'' if model_graph.mlp else ' (attention-only)'}.")
    return g


def import_circuit(path, model_graph: EdgeGraph | None = None) -> MIBCircuit:
    """Read a MIB ``.json`` or ``.pt`` circuit file (checked against ``model_graph`` if given)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"No circuit file at {path}.")
    if path.suffix == ".json":
        try:
            d = json.loads(path.read_text())
            cfg, node_d, edge_d = d["cfg"], d["nodes"], d["edges"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            raise InputError(f"{path} is not a MIB circuit file (JSON with cfg, nodes and edges).") from None
        g = _graph_of(cfg, model_graph)
        scores = np.zeros((g.n_forward, g.n_backward))
        keep = np.zeros_like(scores, dtype=bool)
        for name, info in edge_d.items():
            i, j = g.edge_index(name)
            try:
                scores[i, j], keep[i, j] = float(info["score"]), bool(info["in_graph"])
            except (KeyError, TypeError, ValueError):
                raise InputError(f"Edge {name!r} of {path} has no score / in_graph.") from None
        nodes = np.zeros(g.n_forward, dtype=bool)
        names = g.forward_names
        for name, info in node_d.items():
            if name == "logits":
                continue
            if name not in names:
                raise InputError(f"Unknown node {name!r} in {path}.")
            nodes[names.index(name)] = bool(info.get("in_graph", False))
    elif path.suffix == ".pt":
        try:
            d = torch.load(path, weights_only=True, map_location="cpu")
            cfg = d["cfg"]
            g = _graph_of(cfg, model_graph)
            if list(d["src_nodes"]) != g.forward_names or list(d["dst_nodes"]) != g.backward_names:
                raise InputError(f"{path}: the node lists do not match MIB's order for this graph.")
            scores = d["edges_scores"].double().numpy()
            keep = d["edges_in_graph"].bool().numpy()
            nodes = d["nodes_in_graph"].bool().numpy()
        except InputError:
            raise
        except Exception:
            raise InputError(f"{path} is not a MIB circuit file (.pt with cfg, src_nodes, dst_nodes, edges_scores, "
                             f"edges_in_graph, nodes_in_graph).") from None
        if scores.shape != (g.n_forward, g.n_backward) or keep.shape != scores.shape or nodes.shape != (g.n_forward,):
            raise InputError(f"{path}: the arrays do not have the shape of a {g.n_layers} × {g.n_heads} graph.")
    else:
        raise InputError(f"A MIB circuit file ends in .json or .pt, not {path.suffix or 'nothing'!r}.")
    return MIBCircuit(g, np.where(g.real, scores, 0.0), keep & g.real, nodes)
