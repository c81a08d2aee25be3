"""Discrete SAE codes for circuit discovery (O'Neill & Bui 2024, "Sparse Autoencoders Enable
Scalable and Reliable Circuit Identification in Language Models").

Input: every head's output ``z_h W_O[h]`` averaged over a prompt's positions, ``[N prompts,
n_nodes, d_model]`` (:func:`probes.attribution.head_vectors`), for positive prompts (clean, the
model right) and negative prompts (corrupted). A head's *code* on a prompt is the argmax latent
of its vector. Node score = number of codes a head takes on positive prompts and never on
negative ones, softmax over all heads; edge score of (h1, h2) = number of code pairs (c1, c2)
that co-occur on some positive prompt and on no negative one.

The default is the reference code (charlieoneill11/sae-circuits, ``src/sae.py``,
``src/train.py``, ``experiments/main_results.py``): ONE SAE shared by all heads, trained on the
d_model head vectors of ``n_train = 10`` randomly drawn prompts of the positive+negative mix
(``num_sae_examples``) and then applied to every prompt; 200 latents, tied pre-encoder /
post-decoder bias initialised at 0, ReLU encoder, both weight matrices re-normalised to unit rows
before every forward (encoder [m, d]: each latent's row; decoder [d, m]: each output row, as the
reference's ``ConstrainedUnitNormLinear``) with the gradient component along each row removed,
loss = MSE + λ · mean L1 of the latents (λ = 0.02; its docstring run used 0.05), full-batch Adam
(lr 1e-3), 500 steps.

``shared=False`` is a variant of ours, *per-head SAEs*: one SAE per head, each trained only on
that head's vectors (the SAEs are trained together as one batched program — [n_nodes, m, d]
weights, the sum of the independent losses, Adam being per-parameter). With
``probes.attribution.head_vectors(isometric=True)`` a head's vectors are read in an orthonormal
basis of its output space (d_head coordinates with the d_model vectors' norms and inner
products). The per-head SAEs are a different model from the reference's shared one (a head's
codes come from its own dictionary, not from one dictionary over all heads): their codes, and so
their scores, differ from the reference's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mechscope.probes.errors import InputError


@dataclass
class HeadSAEs:
    """``k`` SAEs (1 when shared — the reference —, else k = n_nodes): weights [k, m, d], [k, m],
    [k, d, m], [k, d]."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_pre: torch.Tensor
    shared: bool
    losses: list

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[N, n_nodes, d] → latents [N, n_nodes, m]."""
        x = x.to(self.W_enc.dtype)
        if self.shared:
            return torch.relu(torch.einsum("nhd,md->nhm", x - self.b_pre[0], self.W_enc[0]) + self.b_enc[0])
        return torch.relu(torch.einsum("nhd,hmd->nhm", x - self.b_pre[None], self.W_enc) + self.b_enc[None])

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """[N, n_nodes] argmax latent (the discrete code), on the CPU."""
        return self.encode(x.to(self.W_enc.device)).argmax(-1).cpu()


def _unit_rows(w: torch.Tensor) -> None:
    with torch.no_grad():
        w.div_(w.norm(dim=-1, keepdim=True).clamp_min(1e-12))


def _project_grad(w: torch.Tensor) -> None:
    """Remove the gradient component along each (unit) row of ``w``."""
    if w.grad is not None:
        with torch.no_grad():
            unit = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            w.grad.sub_((w.grad * unit).sum(-1, keepdim=True) * unit)


def train_head_saes(x: torch.Tensor, n_latents: int = 200, l1: float = 0.02, epochs: int = 500, lr: float = 1e-3,
                    shared: bool = True, seed: int = 0, n_train: int | None = None) -> HeadSAEs:
    """Train on ``x`` [N, n_nodes, d] (float32), full batch: one SAE over every head's vectors
    (``shared=True``, the reference) or one per head (``shared=False``)."""
    if x.ndim != 3 or x.shape[0] < 2:
        raise InputError("Discrete-SAE training needs head vectors [N >= 2 prompts, heads, d_model].")
    if n_latents < 2 or epochs < 1 or l1 < 0:
        raise InputError("Need n_latents >= 2, epochs >= 1 and l1 >= 0.")
    g = torch.Generator().manual_seed(seed)  # initialisation drawn on the CPU, then moved: same SAEs on any device
    dev = x.device
    x = x.detach().float().cpu()
    if n_train is not None:
        x = x[torch.randperm(x.shape[0], generator=g)[:n_train]]
    n, h, d = x.shape
    data = (x.reshape(1, n * h, d) if shared else x.transpose(0, 1).contiguous()).to(dev)  # [k, rows, d]
    k = data.shape[0]
    W_enc = torch.randn(k, n_latents, d, generator=g)
    W_dec = torch.randn(k, d, n_latents, generator=g)
    bound = 1 / math.sqrt(d)
    b_enc = (torch.rand(k, n_latents, generator=g) * 2 - 1) * bound
    b_pre = torch.zeros(k, d)
    W_enc, b_enc, W_dec, b_pre = (t.to(dev) for t in (W_enc, b_enc, W_dec, b_pre))
    params = [p.requires_grad_(True) for p in (W_enc, b_enc, W_dec, b_pre)]
    _unit_rows(W_enc)
    _unit_rows(W_dec)
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for epoch in range(epochs):
        _unit_rows(W_enc)
        _unit_rows(W_dec)
        opt.zero_grad()
        lat = torch.relu(torch.einsum("krd,kmd->krm", data - b_pre[:, None], W_enc) + b_enc[:, None])
        rec = torch.einsum("krm,kdm->krd", lat, W_dec) + b_pre[:, None]
        mse = ((rec - data) ** 2).mean((1, 2))  # per SAE
        sparsity = lat.abs().sum(-1).mean(-1)
        loss = (mse + l1 * sparsity).sum()
        loss.backward()
        _project_grad(W_enc)
        _project_grad(W_dec)
        opt.step()
        if epoch % max(1, epochs // 10) == 0 or epoch == epochs - 1:
            losses.append(float(loss.detach()) / k)
    _unit_rows(W_enc)
    _unit_rows(W_dec)
    return HeadSAEs(W_enc.detach(), b_enc.detach(), W_dec.detach(), b_pre.detach(), shared, losses)


def softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def unique_positive_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """[n_nodes]: per node, the number of distinct codes seen on positive prompts and never on
    negative ones (``pos`` [Np, n_nodes], ``neg`` [Nq, n_nodes] integer codes)."""
    pos, neg = np.asarray(pos), np.asarray(neg)
    out = np.zeros(pos.shape[1], dtype=np.int64)
    for i in range(pos.shape[1]):
        out[i] = len(np.setdiff1d(np.unique(pos[:, i]), np.unique(neg[:, i])))
    return out


def node_scores(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Softmax over all nodes of :func:`unique_positive_counts` (the reference's node score)."""
    return softmax(unique_positive_counts(pos, neg))


def edge_counts(pos: np.ndarray, neg: np.ndarray, n_codes: int) -> np.ndarray:
    """[n_nodes, n_nodes]: per ordered pair (i ≠ j), the number of distinct code pairs
    (c_i, c_j) that co-occur on a positive prompt and on no negative prompt (diagonal 0)."""
    pos = torch.as_tensor(np.asarray(pos), dtype=torch.long)
    neg = torch.as_tensor(np.asarray(neg), dtype=torch.long)
    n = pos.shape[1]
    pair = (torch.arange(n)[:, None] * n + torch.arange(n)[None, :])  # [n, n]

    def keys(c):  # [N, n, n] → unique int64 keys (pair, c_i, c_j)
        k = (pair[None] * n_codes + c[:, :, None]) * n_codes + c[:, None, :]
        return torch.unique(k.reshape(-1))

    kp, kn = keys(pos), keys(neg)
    only = kp[~torch.isin(kp, kn)]
    counts = torch.bincount(only // (n_codes * n_codes), minlength=n * n).reshape(n, n).numpy()
    np.fill_diagonal(counts, 0)
    return counts


def pair_node_counts(edges: np.ndarray, k: int | None = None) -> np.ndarray:
    """[n_nodes]: the reference's "edge" prediction turned into nodes (``src/edge.py``
    ``edge_circuit_prediction``, ``src/main.py`` ``evaluate_edge_circuit``): order all ordered
    head pairs by :func:`edge_counts` (largest first), list the pairs' heads in that order
    (h1, h2, h1', h2', …) and count how often each head occurs among the first ``k`` entries
    (default ``n_nodes² // 2``, the reference's). The reference scores these counts (softmax) by
    ROC-AUC against the *node* ground truth and reports that as its "edge AUC". Ties, which the
    reference's unstable sort leaves in no set order, are taken larger flat index first."""
    edges = np.asarray(edges)
    n = edges.shape[0]
    k = n * n // 2 if k is None else int(k)
    order = np.argsort(edges.ravel(), kind="stable")[::-1]
    heads = np.stack([order // n, order % n], 1).ravel()[:k]
    return np.bincount(heads, minlength=n)


def top_codes(codes: np.ndarray, labels: np.ndarray, k: int = 3) -> list[str]:
    """Per node, its ``k`` most frequent codes on positive prompts, as 'code (count)' text."""
    out = []
    pos = np.asarray(codes)[np.asarray(labels, bool)]
    for i in range(pos.shape[1]):
        vals, cnt = np.unique(pos[:, i], return_counts=True)
        order = np.argsort(-cnt)[:k]
        out.append(", ".join(f"#{int(vals[j])} ({int(cnt[j])})" for j in order))
    return out
