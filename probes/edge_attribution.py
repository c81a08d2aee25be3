"""The residual edge graph of a transformer, edge attribution (EAP, EAP-IG) and circuit evaluation.

The graph follows the MIB circuit track (Mueller et al. 2025) and EAP-IG (Hanna et al. 2024).
Upstream (*forward*) nodes write into the residual stream: ``input`` (the input embeddings,
``blocks.0.hook_resid_pre``; equal to ``hook_embed`` on rotary models), every attention head
``a{l}.h{h}`` (its output ``z_h W_O[h]``, read from ``blocks.l.attn.hook_z``; the bias ``b_O``
is not a node) and every MLP ``m{l}`` (``hook_mlp_out``). Downstream (*backward*) nodes read
it: each head's query, key and value inputs ``a{l}.h{h}<q|k|v>`` (``hook_q_input`` / ``k`` /
``v`` with ``use_split_qkv_input``), each MLP's input (``hook_mlp_in``) and ``logits`` (the
last block's ``hook_resid_post``). An edge joins every upstream node to every downstream input
that reads it: to heads of later layers, to the MLP of the same or a later layer, and to the
logits — ``1 + L(H + 1)`` upstream and ``L(3H + 1) + 1`` downstream nodes, named
``"a0.h1->a2.h3<q>"`` as in MIB. Grouped-query attention is ungrouped as MIB does
(``ungroup_grouped_query_attention``): every *query* head has its own key and value inputs, so
an edge into ``a2.h3<k>`` changes only head 3's keys, not those of the other query heads of its
K/V group.

* :func:`edge_scores` — EAP (Syed et al. 2023; ``steps=1``) or EAP-IG-inputs (Hanna et al.
  2024; ``steps=m``): per edge u→v, ``Σ_pos (a_u^abl − a_u^clean) · ∂(−LD)/∂(input of v)``,
  averaged over prompts; for EAP-IG the gradient is averaged over m runs whose input
  embeddings are ``e_abl + (k/m)(e_clean − e_abl)``, k = 0..m−1 (the reference's left Riemann
  sum). ``a^abl`` is the corrupted run (``ablation="patching"``) or the mean of each node's
  output over the corrupted prompts' real positions (``"mean"``). The score is the estimated
  *loss* of logit difference when the edge carries the ablated value (the reference's metric
  with ``loss=True``): positive = the edge helps the task. Memory: the sum over positions is
  taken inside the gradient hook of each downstream input, as one matrix product with the
  [batch, pos, upstream, d_model] activation differences — nothing is O(edges × positions).
* :func:`evaluate_circuits` — MIB's ``evaluate_graph``: every downstream input reads
  ``Σ_{u in circuit} a_u + Σ_{u pruned} a_u^abl`` (the running value of kept edges, the
  corrupted / mean value of pruned ones); one forward per circuit per prompt batch; per-prompt
  logit differences.
* :func:`topn` / :func:`prune` — MIB's ``Graph.apply_topn`` and ``Graph.prune``.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
import torch

from mechscope.probes import attribution as attr
from mechscope.probes import hooknames
from mechscope.probes.errors import InputError
from mechscope.probes.locks import model_lock

Ablation = Literal["patching", "mean"]
ABLATIONS = ("patching", "mean")
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class EdgeGraph:
    """Index layout of the edge graph (MIB's): forward index 0 = input, ``1 + l(H+m) + h`` =
    head h of layer l, ``1 + l(H+m) + H`` = MLP l (``m`` = 1 with MLPs, 0 attention-only);
    backward index ``l(3H+m) + 'qkv'.index(x)·H + h`` = head input, ``l(3H+m) + 3H`` = MLP
    input, last = logits. ``real`` [n_forward, n_backward] marks the edges that exist."""

    n_layers: int
    n_heads: int
    mlp: bool

    @classmethod
    def from_model(cls, model) -> "EdgeGraph":
        if model.cfg.parallel_attn_mlp:
            raise InputError("Edge graphs of parallel attention/MLP blocks are not supported.")
        return cls(model.cfg.n_layers, model.cfg.n_heads, not model.cfg.attn_only)

    @property
    def m(self) -> int:
        return 1 if self.mlp else 0

    @property
    def n_forward(self) -> int:
        return 1 + self.n_layers * (self.n_heads + self.m)

    @property
    def n_backward(self) -> int:
        return self.n_layers * (3 * self.n_heads + self.m) + 1

    def fwd_head(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + self.m) + head

    def fwd_mlp(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + self.m) + self.n_heads

    def bwd_head(self, layer: int, head: int, qkv: str) -> int:
        return layer * (3 * self.n_heads + self.m) + "qkv".index(qkv) * self.n_heads + head

    def bwd_mlp(self, layer: int) -> int:
        return layer * (3 * self.n_heads + self.m) + 3 * self.n_heads

    def prev_attn(self, layer: int) -> int:
        """Upstream nodes that every head input of ``layer`` reads: forward indices below this."""
        return 1 + layer * (self.n_heads + self.m)

    def prev_mlp(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + self.m) + self.n_heads

    @functools.cached_property
    def forward_names(self) -> list[str]:
        names = ["input"]
        for l in range(self.n_layers):
            names += [f"a{l}.h{h}" for h in range(self.n_heads)] + ([f"m{l}"] if self.mlp else [])
        return names

    @functools.cached_property
    def backward_names(self) -> list[str]:
        names = []
        for l in range(self.n_layers):
            names += [f"a{l}.h{h}<{x}>" for x in "qkv" for h in range(self.n_heads)] + ([f"m{l}"] if self.mlp else [])
        return names + ["logits"]

    @functools.cached_property
    def real(self) -> np.ndarray:
        r = np.zeros((self.n_forward, self.n_backward), dtype=bool)
        H = self.n_heads
        for l in range(self.n_layers):
            c = l * (3 * H + self.m)
            r[: self.prev_attn(l), c:c + 3 * H] = True
            if self.mlp:
                r[: self.prev_mlp(l), self.bwd_mlp(l)] = True
        r[:, -1] = True
        r.flags.writeable = False
        return r

    @functools.cached_property
    def forward_to_backward(self) -> np.ndarray:
        """[n_forward, n_backward]: the downstream inputs that belong to each node."""
        f2b = np.zeros((self.n_forward, self.n_backward), dtype=bool)
        for l in range(self.n_layers):
            for h in range(self.n_heads):
                for x in "qkv":
                    f2b[self.fwd_head(l, h), self.bwd_head(l, h, x)] = True
            if self.mlp:
                f2b[self.fwd_mlp(l), self.bwd_mlp(l)] = True
        f2b.flags.writeable = False
        return f2b

    @functools.cached_property
    def n_edges(self) -> int:
        return int(self.real.sum())

    def edge_names(self) -> list[str]:
        """MIB names of the real edges, in row-major (forward, backward) order."""
        fw, bw = self.forward_names, self.backward_names
        out = []
        for i, j in zip(*np.nonzero(self.real)):
            b = bw[j]
            if "<" in b:
                child, x = b[:-3], b[-2]
                out.append(f"{fw[i]}->{child}<{x}>")
            else:
                out.append(f"{fw[i]}->{b}")
        return out

    @functools.cached_property
    def _edge_map(self) -> dict:
        return {n: (int(i), int(j)) for n, i, j in zip(self.edge_names(), *np.nonzero(self.real))}

    def edge_index(self, name: str) -> tuple[int, int]:
        """(forward, backward) index of a MIB edge name such as ``"a0.h1->a2.h3<q>"``."""
        try:
            return self._edge_map[name]
        except KeyError:
            raise InputError(f"Unknown edge {name!r}: not an edge of a graph of {self.n_layers} layers × {self.n_heads} heads "
                             f"(a node reads only earlier nodes).") from None


def prune(graph: EdgeGraph, in_graph: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MIB's ``Graph.prune``: repeatedly drop nodes without an incoming (the input always has
    one) or an outgoing kept edge, then the edges whose parent or child was dropped, until
    nothing changes. Returns (edges [n_forward, n_backward], nodes [n_forward])."""
    edges = np.asarray(in_graph, dtype=bool) & graph.real
    f2b = graph.forward_to_backward
    nodes = None
    while True:
        outgoing = edges.any(1)
        incoming = (f2b & edges.any(0)[None, :]).any(1)
        incoming[0] = True
        new = outgoing & incoming
        if nodes is not None and np.array_equal(new, nodes):
            break
        nodes = new
        child = (f2b & nodes[:, None]).any(0)
        child[-1] = True  # the logits are always in the graph
        edges &= nodes[:, None] & child[None, :]
    return edges, nodes


def topn(graph: EdgeGraph, scores: np.ndarray, n: int, absolute: bool = True, do_prune: bool = True) -> np.ndarray:
    """MIB's ``Graph.apply_topn`` at edge level: the ``n`` real edges of highest score
    (|score| with ``absolute``; ties broken by index order, stable), then :func:`prune`."""
    real = graph.real
    if not 0 <= n <= real.sum():
        raise InputError(f"A circuit of {n} edges does not fit a graph of {int(real.sum())} edges.")
    s = np.abs(scores) if absolute else np.asarray(scores, dtype=np.float64)
    s = np.where(real, s, -np.inf).ravel()
    order = np.argsort(-s, kind="stable")
    keep = np.zeros(s.size, dtype=bool)
    keep[order[:n]] = True
    keep = keep.reshape(real.shape)
    return prune(graph, keep)[0] if do_prune else keep


@contextlib.contextmanager
def edge_inputs(model):
    """Run ``model`` with per-head q/k/v inputs, K/V ungrouped to the query heads and the MLP
    input hook on (TransformerLens ``use_split_qkv_input``, ``ungroup_grouped_query_attention``,
    ``use_hook_mlp_in``); the config is restored on exit, under the model's lock."""
    cfg = model.cfg
    with model_lock(model):
        old = (cfg.use_split_qkv_input, cfg.ungroup_grouped_query_attention, cfg.use_hook_mlp_in)
        cfg.use_split_qkv_input, cfg.ungroup_grouped_query_attention, cfg.use_hook_mlp_in = True, True, True
        try:
            yield
        finally:
            cfg.use_split_qkv_input, cfg.ungroup_grouped_query_attention, cfg.use_hook_mlp_in = old


def check_ablation(ablation: str) -> str:
    if ablation not in ABLATIONS:
        raise InputError(f"Ablation must be one of {', '.join(ABLATIONS)}, not {ablation!r}.")
    return ablation


def _output_hooks(model, graph: EdgeGraph, sink: Callable[[int, torch.Tensor], None]) -> list:
    """Forward hooks that hand every upstream node's output ([b, T, d_model], or [b, T, H,
    d_model] for a layer's heads at once) to ``sink(first forward index, tensor)``."""
    hooks = [(hooknames.name("resid_pre", 0), lambda x, hook: sink(0, x.unsqueeze(2)))]
    for l in range(graph.n_layers):
        W_O = model.blocks[l].attn.W_O

        def heads(z, hook, l=l, W_O=W_O):
            sink(graph.fwd_head(l, 0), torch.einsum("bthe,hed->bthd", z, W_O))

        hooks.append((hooknames.name("z", l), heads))
        if graph.mlp:
            hooks.append((hooknames.name("mlp_out", l), lambda x, hook, l=l: sink(graph.fwd_mlp(l), x.unsqueeze(2))))
    return hooks


def node_outputs(model, graph: EdgeGraph, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every upstream node's output on ``tokens``: [n_forward, b, T, d_model] (node-major, so
    that a prefix of the nodes is one matrix for the products below); and the logits at each
    row's last real position."""
    b, t = tokens.shape
    out = torch.zeros(graph.n_forward, b, t, model.cfg.d_model, dtype=model.cfg.dtype, device=model.cfg.device)

    def sink(i, x):
        out[i:i + x.shape[2]] = x.permute(2, 0, 1, 3)

    with torch.no_grad(), model.hooks(fwd_hooks=_output_hooks(model, graph, sink), reset_hooks_end=True):
        logits = attr.last_logits(model, tokens.to(model.cfg.device), lengths)
    return out, logits


def node_means(model, graph: EdgeGraph, pairs: attr.Pairs, batch_size: int = 8, which: str = "corrupt") -> torch.Tensor:
    """[n_forward, d_model]: each upstream node's output averaged over the real positions of
    the ``which`` prompts (MIB's ``mean`` ablation: one vector per node, not per position)."""
    acc = torch.zeros(graph.n_forward, model.cfg.d_model, dtype=torch.float64)
    count = 0
    with edge_inputs(model):
        for idx in _chunks(len(pairs), batch_size):
            sub = pairs.subset(idx)
            acts, _ = node_outputs(model, graph, sub.tokens(which), sub.lengths)
            mask = _mask(sub).to(acts.device).to(acts.dtype)
            acc += torch.einsum("nbtd,bt->nd", acts, mask).double().cpu()
            count += int(sub.lengths.sum())
    return (acc / count).to(model.cfg.dtype)


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield torch.arange(s, min(n, s + size))


def _mask(sub: attr.Pairs) -> torch.Tensor:
    return torch.arange(sub.clean.shape[1])[None, :] < sub.lengths[:, None]


def _ablated(model, graph, sub, ablation, means):
    """[n_forward, b, T, d_model] ablated upstream outputs of a batch (corrupted run or means)."""
    if ablation == "patching":
        return node_outputs(model, graph, sub.corrupt, sub.lengths)[0]
    b, t = sub.clean.shape
    n, d = means.shape
    return means.to(model.cfg.device, model.cfg.dtype)[:, None, None].expand(n, b, t, d).clone()


@dataclass
class EdgeAttribution:
    """Edge scores [n_forward, n_backward] (mean over prompts; 0 on non-edges), per-prompt scores
    [N, n_forward, n_backward] (float32, for bootstrap resampling; None unless asked for), and
    the clean and ablated runs' mean logit difference."""

    graph: EdgeGraph
    scores: np.ndarray
    per_prompt: np.ndarray | None
    clean: float
    ablated: float
    passes: dict


def edge_scores(model, pairs: attr.Pairs, steps: int = 1, ablation: Ablation = "patching", batch_size: int = 8,
                means: torch.Tensor | None = None, per_prompt: bool = False,
                progress: ProgressFn | None = None) -> EdgeAttribution:
    """EAP (``steps=1``) or EAP-IG-inputs (``steps>1``) scores of every edge (module doc).
    ``means``: the node means of :func:`node_means` (computed from the corrupted prompts when
    ``ablation="mean"`` and not given)."""
    if not isinstance(steps, int) or steps < 1:
        raise InputError("EAP-IG needs steps >= 1.")
    check_ablation(ablation)
    if len(pairs) == 0:
        raise InputError("No prompt pairs to attribute.")
    graph = EdgeGraph.from_model(model)
    if ablation == "mean" and means is None:
        means = node_means(model, graph, pairs, batch_size)
    n = len(pairs)
    H, L = graph.n_heads, graph.n_layers
    total = torch.zeros(graph.n_forward, graph.n_backward, dtype=torch.float64)
    prompts = np.zeros((n, graph.n_forward, graph.n_backward), dtype=np.float32) if per_prompt else None
    base_clean = base_abl = 0.0
    dev = model.cfg.device
    fractions = attr.ig_fractions(steps)
    done = 0
    with edge_inputs(model):
        for idx in _chunks(n, batch_size):
            sub = pairs.subset(idx)
            b = len(idx)
            clean_acts, clean_logits = node_outputs(model, graph, sub.clean, sub.lengths)
            if ablation == "patching":
                abl_acts, abl_logits = node_outputs(model, graph, sub.corrupt, sub.lengths)
                base_abl += float(attr.logit_diff(abl_logits, sub).double().sum())
            else:
                abl_acts = _ablated(model, graph, sub, ablation, means)
            base_clean += float(attr.logit_diff(clean_logits, sub).double().sum())
            e_clean, e_abl = clean_acts[0].clone(), abl_acts[0].clone()
            diff = abl_acts - clean_acts  # [n_forward, b, T, d]
            flat = diff.permute(1, 0, 2, 3).reshape(b, graph.n_forward, -1)  # [b, n, T·d], a view
            del clean_acts, abl_acts
            batch = torch.zeros(b, graph.n_forward, graph.n_backward, dtype=diff.dtype, device=dev)

            def grad_hook(prev: int, cols, x: torch.Tensor):
                def on_grad(g):  # g: [b, T, H, d] (head inputs) or [b, T, d]
                    with torch.no_grad():
                        if g.ndim == 4:  # Σ_{t, d} diff[n, b, t, d] g[b, t, h, d] as one batched product
                            gg = g.permute(0, 1, 3, 2).reshape(b, -1, g.shape[2])  # [b, T·d, H]
                            batch[:, :prev, cols] += torch.bmm(flat[:, :prev], gg)
                        else:
                            batch[:, :prev, cols] += torch.bmm(flat[:, :prev], g.reshape(b, -1, 1))[..., 0]
                x.register_hook(on_grad)

            hooks = []
            for l in range(L):
                for x in "qkv":
                    c0 = graph.bwd_head(l, 0, x)
                    hooks.append((hooknames.name(f"{x}_input", l),
                                  lambda t, hook, p=graph.prev_attn(l), c=slice(c0, c0 + H): grad_hook(p, c, t)))
                if graph.mlp:
                    hooks.append((hooknames.name("mlp_in", l),
                                  lambda t, hook, p=graph.prev_mlp(l), c=graph.bwd_mlp(l): grad_hook(p, c, t)))
            hooks.append((hooknames.name("resid_post", L - 1),
                          lambda t, hook, c=graph.n_backward - 1: grad_hook(graph.n_forward, c, t)))
            for beta in fractions:
                emb = (e_clean if beta == 1.0 else e_abl + beta * (e_clean - e_abl)).detach().clone().requires_grad_(True)

                def embed(x, hook, emb=emb):
                    return emb

                with torch.enable_grad(), model.hooks(fwd_hooks=[(hooknames.name("resid_pre", 0), embed)] + hooks,
                                                      reset_hooks_end=True):
                    ld = attr.logit_diff(attr.last_logits(model, sub.clean.to(dev), sub.lengths), sub)
                    torch.autograd.grad((-ld).sum(), emb)
            batch /= len(fractions)
            total += batch.sum(0).double().cpu()
            if prompts is not None:
                prompts[idx.numpy()] = batch.float().cpu().numpy()
            done += b
            if progress:
                progress(done, n)
    real = graph.real
    scores = (total / n).numpy() * real
    if prompts is not None:
        prompts *= real[None]
    if ablation == "mean":
        base_abl = float("nan")
    return EdgeAttribution(graph=graph, scores=scores, per_prompt=prompts, clean=base_clean / n, ablated=base_abl / n,
                           passes={"forward_prompt_sets": (2 if ablation == "patching" else 1) + len(fractions),
                                   "backward_prompt_sets": len(fractions)})


def evaluate_circuits(model, pairs: attr.Pairs, circuits: Sequence[np.ndarray], ablation: Ablation = "patching",
                      batch_size: int = 8, means: torch.Tensor | None = None, progress: ProgressFn | None = None,
                      max_bytes: int | None = None) -> np.ndarray:
    """[len(circuits), N] logit difference of every prompt with every circuit (MIB's
    ``evaluate_graph``): each circuit is an [n_forward, n_backward] bool mask of kept edges,
    used as given (prune it first, as MIB does); a pruned edge carries its upstream node's
    ablated value (corrupted run, or ``means``), a kept edge the running value. Several
    circuits run in one forward (rows = circuits × prompts), as many as keep the
    [rows, pos, n_forward, d_model] buffer under ``max_bytes`` (default 256 MiB on CPU, 4 GiB
    on a GPU)."""
    check_ablation(ablation)
    graph = EdgeGraph.from_model(model)
    real = graph.real
    masks = []
    for c in circuits:
        c = np.asarray(c, dtype=bool)
        if c.shape != real.shape:
            raise InputError(f"A circuit mask must be [{graph.n_forward}, {graph.n_backward}], not {list(c.shape)}.")
        masks.append(~(c & real) & real)
    if not masks:
        return np.zeros((0, len(pairs)))
    pruned_all = torch.as_tensor(np.stack(masks))
    if ablation == "mean" and means is None:
        means = node_means(model, graph, pairs, batch_size)
    n, H, L = len(pairs), graph.n_heads, graph.n_layers
    out = np.zeros((len(masks), n))
    dev = model.cfg.device
    if max_bytes is None:
        max_bytes = (256 if str(dev) == "cpu" else 4096) * 2 ** 20
    done = 0
    with edge_inputs(model), torch.no_grad():
        for idx in _chunks(n, batch_size):
            sub = pairs.subset(idx)
            b, t = sub.clean.shape
            abl = _ablated(model, graph, sub, ablation, means)  # [n_forward, b, T, d]
            per_row = t * graph.n_forward * model.cfg.d_model * abl.element_size()
            n_c = max(1, min(len(masks), max_bytes // max(1, per_row * b)))
            for c0 in range(0, len(masks), n_c):
                pruned = pruned_all[c0:c0 + n_c].to(dev, abl.dtype)  # [C, n_forward, n_backward]
                C = pruned.shape[0]
                delta = abl.unsqueeze(0).repeat(C, 1, 1, 1, 1)  # [C, n_forward, b, T, d]: ablated − running
                flat = delta.view(C, graph.n_forward, -1)  # [C, n, b·T·d]

                def sink(i, x, delta=delta, C=C):  # x: [C·b, T, k, d]
                    delta[:, i:i + x.shape[2]] -= x.view(C, -1, *x.shape[1:]).permute(0, 3, 1, 2, 4)

                pending: dict[int, torch.Tensor] = {}

                def attn_in(x, hook, l, which, pruned=pruned, flat=flat, pending=pending, C=C):
                    if which == "q":
                        pending.clear()
                        p = graph.prev_attn(l)
                        c = graph.bwd_head(l, 0, "q")
                        m = pruned[:, :p, c:c + 3 * H]
                        if bool(m.any()):  # Σ_n pruned[n, h] delta[n] as one batched product
                            add = torch.bmm(m.transpose(1, 2), flat[:, :p])  # [C, 3H, b·T·d]
                            pending[l] = add.view(C, 3 * H, b, t, -1).permute(0, 2, 3, 1, 4).reshape(C * b, t, 3 * H, -1)
                    add = pending.get(l)
                    if add is None:
                        return x
                    k = "qkv".index(which)
                    return x + add[:, :, k * H:(k + 1) * H]

                def single_in(x, hook, prev, col, pruned=pruned, flat=flat, C=C):
                    m = pruned[:, :prev, col]
                    if not bool(m.any()):
                        return x
                    return x + torch.bmm(m.unsqueeze(1), flat[:, :prev]).view(C * b, t, -1)

                hooks = _output_hooks(model, graph, sink)
                for l in range(L):
                    for x in "qkv":
                        hooks.append((hooknames.name(f"{x}_input", l), lambda t_, hook, l=l, w=x, f=attn_in: f(t_, hook, l, w)))
                    if graph.mlp:
                        hooks.append((hooknames.name("mlp_in", l),
                                      lambda t_, hook, p=graph.prev_mlp(l), c=graph.bwd_mlp(l), f=single_in: f(t_, hook, p, c)))
                hooks.append((hooknames.name("resid_post", L - 1),
                              lambda t_, hook, f=single_in: f(t_, hook, graph.n_forward, graph.n_backward - 1)))
                rows = torch.arange(b).repeat(C)
                with model.hooks(fwd_hooks=hooks, reset_hooks_end=True):
                    logits = attr.last_logits(model, sub.clean.repeat(C, 1).to(dev), sub.lengths.repeat(C))
                ld = attr.logit_diff(logits, sub, rows).double().cpu().numpy().reshape(C, b)
                out[c0:c0 + C][:, idx.numpy()] = ld
                done += C * b
                if progress:
                    progress(done, n * len(masks))
    return out
