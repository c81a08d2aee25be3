"""Discrete SAE codes for circuit discovery (O'Neill & Bui 2024; REFERENCES §19).

Input: every head's output averaged over a prompt's positions, ``[N prompts, n_nodes, d_model]``
(:func:`probes.attribution.head_vectors`), for positive prompts (clean, the model right) and
negative prompts (corrupted). One small SAE per head is trained on that head's N vectors; a
head's *code* on a prompt is the argmax latent. Node score = number of codes seen on positive
prompts and never on negative ones, softmax over all heads; edge score of (h1, h2) = number of
code pairs (c1, c2) that co-occur on some positive prompt and on no negative one.

The SAE follows the reference code (charlieoneill11/sae-circuits, ``src/sae.py``,
``src/train.py``): tied pre-encoder / post-decoder bias initialised at 0, ReLU encoder, both
weight matrices re-normalised to unit rows before every forward (encoder [m, d]: each latent's
row; decoder [d, m]: each output row, as the reference's ``ConstrainedUnitNormLinear(m, d)``
does) with the gradient component along each row removed, loss = MSE + λ · mean L1 of the
latents, full-batch Adam (lr 1e-3), 500 epochs, 200 latents, λ = 0.02.

Deviations, stated: (1) the reference trains ONE SAE shared by all heads (its input is
[N, heads, d] into a single ``SparseAutoencoder(d, 200)``); §19 and the issue say one SAE per
head. ``shared=False`` (default) trains one per head, ``shared=True`` the reference's single
shared SAE. (2) The per-head SAEs are trained *together* as one batched tensor program
([n_nodes, m, d] weights, the sum of the independent per-head losses, Adam being per-parameter)
instead of n_nodes SAE-Lens trainer runs: 270 separate SAE-Lens runs of 500 steps cost minutes
on a CPU, the batched program seconds, and SAE-Lens has no trainer for many independent small
inputs. (3) Like the reference (``num_sae_examples = 10``), the SAEs train on ``n_train``
randomly drawn prompts of the positive+negative mix and then encode every prompt; ``n_train=None``
trains on all. (4) Per-head SAEs read each head's output in an orthonormal basis of that head's
output space (``probes.attribution.head_vectors(isometric=True)``: d_head = 64 coordinates with
exactly the d_model vectors' norms and inner products) — the same geometry at 1/9 of the cost on
SmolLM2; ``isometric=False`` feeds the raw d_model vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from probes.errors import InputError


@dataclass
class HeadSAEs:
    """``k`` SAEs (k = n_nodes, or 1 when shared): weights [k, m, d], [k, m], [k, d, m], [k, d]."""

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
                    shared: bool = False, seed: int = 0, n_train: int | None = None) -> HeadSAEs:
    """Train the SAEs on ``x`` [N, n_nodes, d] (float32), full batch."""
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


def top_codes(codes: np.ndarray, labels: np.ndarray, k: int = 3) -> list[str]:
    """Per node, its ``k`` most frequent codes on positive prompts, as 'code (count)' text."""
    out = []
    pos = np.asarray(codes)[np.asarray(labels, bool)]
    for i in range(pos.shape[1]):
        vals, cnt = np.unique(pos[:, i], return_counts=True)
        order = np.argsort(-cnt)[:k]
        out.append(", ".join(f"#{int(vals[j])} ({int(cnt[j])})" for j in order))
    return out
