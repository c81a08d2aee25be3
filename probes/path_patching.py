"""Head→head edges: path patching (ground truth) and edge attribution (EAP / EAP-IG).

An edge s→r joins a sender head s (layer ls) to a receiver head r (layer lr > ls) through the
residual stream. Replacing s's output by its source-run value changes the residual of every later
layer by the fixed vector ``Δ_s = (z_s^src − z_s^tgt) W_O[s]`` (per position) when every other
path is frozen. **Path patching** of s→r (Wang et al. 2022 §3.1; Goldowsky-Dill et al. 2023,
"Localizing model behavior with path patching") adds Δ_s to the receiver's input *only* — r reads
``resid_pre[lr] + Δ_s``; every other head, MLP and the rest of the stream read the target run —
and lets the receiver's changed output flow on through the rest of the model to the metric. The
effect is the change of the mean logit difference. This is the *direct* edge of the residual
graph (Goldowsky-Dill et al.'s edge, the edge EAP scores): heads and MLPs between s and r are
frozen, so s→MLP→r is not counted — Wang et al. freeze only the heads and let MLPs recompute.

Receivers under grouped-query attention: a receiver is a *query* head (the node of the node
ground truth), and it is patched through its own query, key and value inputs: TransformerLens'
``use_split_qkv_input`` gives each head its own pre-norm input (``blocks.L.hook_q_input`` /
``hook_k_input`` / ``hook_v_input``, [batch, pos, head, d_model]) and
``ungroup_grouped_query_attention`` gives each query head its own copy of its K/V group's
projection, so patching r's key/value input leaves the other query heads of its K/V group clean.
``inputs`` names which of r's inputs receive Δ_s: ``"qkv"`` (the default and the ground truth),
or ``"q"`` (query path) / ``"kv"`` (key/value path) / any of q, k, v, reported separately.

Cost of :func:`path_patch_edges`: two forwards over the prompts (source and target runs) plus,
per receiver layer, forwards from that layer on over (edges into the layer × input groups) copies
of the prompts — one batch row-block per edge, all edges of a receiver layer in one forward
(chunked to ``max_rows`` rows). :func:`attribution_edges` (Syed et al. 2023, EAP; Hanna et al.
2024, EAP-IG) estimates every edge from one backward pass: ``Σ_pos Δ_s · ∂metric/∂(input of r)``
at the target run (``steps = m > 1``: the gradient averaged over m runs with interpolated input
embeddings, as :func:`probes.attribution.attribution_nodes`). It equals path patching where the
model is linear from the receiver's input to the metric (tested).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from mechscope.probes import attribution as attr
from mechscope.probes import hooknames
from mechscope.probes.errors import InputError
from mechscope.probes.locks import model_lock

Node = tuple[int, int]
Edge = tuple[Node, Node]
#: receiver input groups: which of the receiver's q / k / v inputs get the sender's delta
INPUT_GROUPS = {"q": ("q",), "k": ("k",), "v": ("v",), "kv": ("k", "v"), "qk": ("q", "k"), "qv": ("q", "v"),
                "qkv": ("q", "k", "v")}


def node_name(node: Node) -> str:
    return hooknames.head_label(*node)


def parse_node(model, node) -> Node:
    """``"L3H2"`` or ``(3, 2)`` → (layer, head), checked against the model."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if isinstance(node, str):
        try:
            layer, head = hooknames.parse_head(node)
        except InputError:
            raise InputError(f"Unknown node {node!r}: name heads 'L<layer>H<head>' (e.g. 'L3H2').") from None
    else:
        try:
            layer, head = (int(x) for x in node)
        except (TypeError, ValueError):
            raise InputError(f"Unknown node {node!r}: give a head as (layer, head) or 'L<layer>H<head>'.") from None
    if not (0 <= layer < L and 0 <= head < H):
        raise InputError(f"Unknown node {hooknames.head_label(layer, head)}: the model has {L} layers of {H} heads.")
    return layer, head


def check_edges(model, edges: Sequence) -> list[Edge]:
    """Parse ``[(sender, receiver), ...]``; refuse an empty list, unknown heads and receivers not
    above their sender (a head reads only the outputs of earlier layers)."""
    out = []
    for e in edges:
        try:
            s, r = e
        except (TypeError, ValueError):
            raise InputError(f"An edge is a (sender, receiver) pair of heads, not {e!r}.") from None
        s, r = parse_node(model, s), parse_node(model, r)
        if r[0] <= s[0]:
            raise InputError(f"Edge {node_name(s)}→{node_name(r)}: the receiver's layer must be above the sender's "
                             f"(a head reads only earlier layers' outputs).")
        out.append((s, r))
    if not out:
        raise InputError("No edges to score: give at least one (sender, receiver) pair of heads in different layers.")
    return out


def check_inputs(inputs) -> tuple[str, ...]:
    inputs = (inputs,) if isinstance(inputs, str) else tuple(inputs)
    bad = [g for g in inputs if g not in INPUT_GROUPS]
    if bad or not inputs:
        raise InputError(f"Receiver inputs must be among {', '.join(INPUT_GROUPS)}, not {bad or 'nothing'}.")
    return inputs


def edges_among(nodes: Sequence[Node]) -> list[Edge]:
    """Every ordered pair of the given heads with the receiver in a later layer."""
    nodes = [tuple(int(x) for x in n) for n in nodes]
    return [(s, r) for s in nodes for r in nodes if r[0] > s[0]]


@contextmanager
def split_head_inputs(model):
    """Run ``model`` with per-head q/k/v inputs (TransformerLens ``use_split_qkv_input``) and K/V
    ungrouped to the query heads; the config is restored on exit, under the model's lock."""
    cfg = model.cfg
    with model_lock(model):
        old = (cfg.use_split_qkv_input, cfg.ungroup_grouped_query_attention)
        cfg.use_split_qkv_input, cfg.ungroup_grouped_query_attention = True, True
        try:
            yield
        finally:
            cfg.use_split_qkv_input, cfg.ungroup_grouped_query_attention = old


def _input_name(kind: str, layer: int) -> str:
    return hooknames.name(f"{kind}_input", layer)


@dataclass
class EdgeEffects:
    """Mean metric change per edge and receiver-input group: ``effects`` [len(inputs), len(edges)];
    the target and source runs' mean metric (for :func:`probes.attribution.normalise`)."""

    edges: list
    inputs: tuple
    effects: np.ndarray
    target: float
    source: float
    passes: dict

    def normalised(self) -> np.ndarray:
        return attr.normalise(self.effects, self.target, self.source)


def _sender_deltas(model, pairs: attr.Pairs, senders: set, src_name: str, tgt_name: str,
                   keep: Sequence[str] = ()) -> tuple[dict, dict, dict, float, float]:
    """Per sender head, Δ = (z_src − z_tgt) W_O on the chunk ``pairs`` ([b, T, d_model], zero at
    padding); both runs' activations at the hook names ``keep``; both runs' metric sums."""
    dev = model.cfg.device
    z_names = {hooknames.name("z", l) for l, _ in senders}
    names = list(z_names | set(keep))
    src, tgt = {}, {}
    with torch.no_grad():
        with model.hooks(fwd_hooks=[(n, attr._keep_into(src)) for n in names], reset_hooks_end=True):
            ls = attr.last_logits(model, pairs.tokens(src_name).to(dev), pairs.lengths)
        with model.hooks(fwd_hooks=[(n, attr._keep_into(tgt)) for n in names], reset_hooks_end=True):
            lt = attr.last_logits(model, pairs.tokens(tgt_name).to(dev), pairs.lengths)
        mask = (torch.arange(pairs.clean.shape[1])[None, :] < pairs.lengths[:, None]).to(dev)
        deltas = {}
        for l, h in senders:
            n = hooknames.name("z", l)
            dz = (src[n][:, :, h] - tgt[n][:, :, h]) * mask[..., None]
            deltas[(l, h)] = dz @ model.W_O[l, h]
    base_s = float(attr.logit_diff(ls, pairs).double().sum())
    base_t = float(attr.logit_diff(lt, pairs).double().sum())
    return deltas, src, tgt, base_t, base_s


def path_patch_edges(model, pairs: attr.Pairs, edges: Sequence, direction: attr.Direction = "noising",
                     inputs=("qkv",), batch_size: int = 8, max_rows: int = 128,
                     progress: attr.ProgressFn | None = None) -> EdgeEffects:
    """Path patching of every edge (module doc): the change of the mean logit difference when the
    receiver alone reads the sender's source-run output through the ``inputs`` groups."""
    edges = check_edges(model, edges)
    groups = check_inputs(inputs)
    tgt_name, src_name = attr._check_direction(direction)
    dev = model.cfg.device
    recv_layers = sorted({r[0] for _, r in edges})
    jobs = {lr: [(e, g) for e, (_, r) in enumerate(edges) if r[0] == lr for g in range(len(groups))] for lr in recv_layers}
    sums = torch.zeros(len(groups), len(edges), dtype=torch.float64)
    base_t = base_s = 0.0
    n = len(pairs)
    done, total = 0, n * sum(len(j) for j in jobs.values())
    forwards = 0
    senders = {snd for snd, _ in edges}
    r_names = {lr: hooknames.name("resid_pre", lr) for lr in recv_layers}
    kinds = sorted({k for g in groups for k in INPUT_GROUPS[g]})
    with model_lock(model), torch.no_grad():
        for idx in attr._chunks(n, batch_size):
            sub = pairs.subset(idx)
            b = len(idx)
            deltas, _, resid, sum_t, sum_s = _sender_deltas(model, sub, senders, src_name, tgt_name, list(r_names.values()))
            base_t, base_s = base_t + sum_t, base_s + sum_s
            per = max(1, max_rows // b)
            for lr in recv_layers:
                for c in range(0, len(jobs[lr]), per):
                    chunk = jobs[lr][c:c + per]
                    nb = len(chunk)

                    def add(x, hook, chunk=chunk, b=b):
                        kind = hook.name.rsplit("hook_", 1)[1][0]  # q / k / v
                        x = x.clone()
                        for j, (e, g) in enumerate(chunk):
                            if kind in INPUT_GROUPS[groups[g]]:
                                snd, rcv = edges[e]
                                x[j * b:(j + 1) * b, :, rcv[1]] += deltas[snd]
                        return x

                    hooks = [(_input_name(k, lr), add) for k in kinds]
                    with split_head_inputs(model), model.hooks(fwd_hooks=hooks, reset_hooks_end=True):
                        logits = attr.last_logits(model, resid[r_names[lr]].repeat(nb, 1, 1), sub.lengths.repeat(nb),
                                                  start_at_layer=lr, tokens=sub.tokens(tgt_name).repeat(nb, 1).to(dev))
                    rows = torch.arange(b).repeat(nb)
                    ld = attr.logit_diff(logits, sub, rows).double().cpu().reshape(nb, b).sum(1)
                    for j, (e, g) in enumerate(chunk):
                        sums[g, e] += ld[j]
                    forwards += 1
                    done += nb * b
                    if progress:
                        progress(done, total)
    t, s = base_t / n, base_s / n
    n_jobs = sum(len(j) for j in jobs.values())
    return EdgeEffects(edges, groups, (sums / n - t).numpy(), t, s,
                       {"forward_prompt_sets": 2 + n_jobs, "forward_calls": forwards + 2 * len(list(attr._chunks(n, batch_size))),
                        "note": f"{n_jobs} edge×input copies of the prompts, each from its receiver's layer on; "
                                f"{len(recv_layers)} receiver layers"})


def attribution_edges(model, pairs: attr.Pairs, edges: Sequence, direction: attr.Direction = "noising",
                      steps: int = 1, inputs=("qkv",), batch_size: int = 8,
                      progress: attr.ProgressFn | None = None) -> EdgeEffects:
    """Edge attribution patching (``steps=1``, Syed et al. 2023) or EAP-IG (``steps>1``, Hanna et
    al. 2024): ``Σ_pos (Δ_s · ∂metric/∂x_r)``, x_r the receiver's q/k/v inputs named by ``inputs``
    (pre-norm, per head), the gradient at the target run (or averaged over the interpolation)."""
    if not isinstance(steps, int) or steps < 1:
        raise InputError("EAP-IG needs steps >= 1.")
    edges = check_edges(model, edges)
    groups = check_inputs(inputs)
    tgt_name, src_name = attr._check_direction(direction)
    dev = model.cfg.device
    recv_layers = sorted({r[0] for _, r in edges})
    kinds = sorted({k for g in groups for k in INPUT_GROUPS[g]})
    names = [_input_name(k, l) for l in recv_layers for k in kinds]
    e_names = attr._embed_hooks(model)
    senders = {snd for snd, _ in edges}
    scores = torch.zeros(len(groups), len(edges), dtype=torch.float64)
    base_t = base_s = 0.0
    n = len(pairs)
    done = 0
    with model_lock(model):
        for idx in attr._chunks(n, batch_size):
            sub = pairs.subset(idx)
            deltas, emb_s, emb_t, sum_t, sum_s = _sender_deltas(model, sub, senders, src_name, tgt_name, e_names)
            base_t, base_s = base_t + sum_t, base_s + sum_s
            grads = attr.ig_gradients(model, sub, sub.tokens(tgt_name).to(dev), emb_s, emb_t, e_names, names, steps,
                                      context=lambda: split_head_inputs(model))
            with torch.no_grad():
                for gi, g in enumerate(groups):
                    for e, (snd, rcv) in enumerate(edges):
                        grad = sum(grads[_input_name(k, rcv[0])][:, :, rcv[1]] for k in INPUT_GROUPS[g])
                        scores[gi, e] += float((deltas[snd] * grad).double().sum())
            done += len(idx)
            if progress:
                progress(done, n)
    t, s = base_t / n, base_s / n
    return EdgeEffects(edges, groups, (scores / n).numpy(), t, s,
                       {"forward_prompt_sets": 2 + steps, "backward_prompt_sets": steps})
