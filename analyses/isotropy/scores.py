"""Isotropy scores of a point cloud (docs/isotropy.md#isoscore, docs/isotropy.md#self-similarity).

Scores of a point cloud X (N points × n dimensions):

* **IsoScore** (Rudman et al. 2022): the eigenvalues of X's covariance (the variances of the
  points projected on their principal components), rescaled to norm √n; defect
  δ = ||v̂ − 1|| / √(2(n − √n)); IsoScore = ((n − δ²(n − √n))² − n) / (n(n − 1)) ∈ [0, 1].
  Equal to the pip package ``isoscore`` 2.0.1 (whose input is points × dimensions; 1.x took
  dimensions × points) to 1e-6 — tested. It uses the singular values of the covariance,
  i.e. the absolute eigenvalues; so do we.
* **IsoScore*** (Rudman & Eickhoff 2023): the same on the shrunk covariance
  (1 − ζ)·C + ζ·C0. The package's advice is C0 = I when no larger sample is at hand;
  ``c0="identity"`` is that. Our default ``c0="scaled_identity"`` is (tr C / n)·I — the same
  target scaled to the cloud, so IsoScore* keeps IsoScore's invariance to a global rescaling
  (with C0 = I a residual stream of norm ~100 would hardly be shrunk at all). A matrix may be
  given too (e.g. the covariance of a larger sample). ζ = 0.2 by default (our choice).
* **Average cosine** of seeded random pairs (i ≠ j), or of all distinct pairs.
* **Partition score** (Mu & Viswanath 2018): min_u Z(u) / max_u Z(u), Z(u) = Σ_x exp(uᵀx),
  u over the eigenvectors of XᵀX (uncentred) — the *columns* of ``eigh``'s matrix. An
  eigenvector's sign is arbitrary (LAPACK's choice), so u runs over ±u_i (both are unit
  eigenvectors); Z is computed as a log-sum-exp (residual streams overflow exp).
* **Self-similarity / Su & Collier isotropy** (§14): cosine between the token
  representations of one sequence over all ordered pairs i ≠ j, pooled over sequences as
  their code does (Σ cos / Σ T(T − 1)); isotropy = 1 − that. Computed exactly from Σ_i x̂_i:
  Σ_{i≠j} cos = ||Σ x̂||² − T. They measure the final layer as Hugging Face's
  ``hidden_states[-1]`` (after the final norm): that is the extra depth ``ln_final``.
* **Outlier dimensions**: dimensions whose variance exceeds ``multiple`` × the average
  variance (Rudman et al. 2023 use 5×), and those whose |mean| exceeds ``multiple`` × the
  average |mean|, with their indices.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from mechscope.probes.errors import InputError

C0_CHOICES = ("scaled_identity", "identity")


def _points(points, name: str = "points", check_finite: bool = True) -> torch.Tensor:
    x = torch.as_tensor(points).detach()
    if x.ndim != 2:
        raise InputError(f"{name} must be a 2-D array of points × dimensions, not shape {tuple(x.shape)}.")
    if x.shape[0] < 2:
        raise InputError(f"{name} needs at least 2 points (got {x.shape[0]}).")
    if x.shape[1] < 2:
        raise InputError(f"{name} needs at least 2 dimensions (got {x.shape[1]}).")
    if not x.is_floating_point():
        x = x.double()
    if check_finite and not torch.isfinite(x).all():
        raise InputError(f"{name} contains NaN or infinite values.")
    return x


def covariance(points) -> torch.Tensor:
    """Sample covariance (N − 1 denominator) of points [N, n], in float64. A NaN or an
    infinity anywhere in the points reaches the covariance, so only the n × n result is
    checked (not the N × n points: that pass would cost as much as the product)."""
    x = _points(points, check_finite=False).double()
    xc = x - x.mean(0)
    c = xc.T @ xc / (x.shape[0] - 1)
    if not torch.isfinite(c).all():
        raise InputError("points contains NaN or infinite values.")
    return c


def isoscore_from_eigenvalues(eigenvalues) -> float:
    """IsoScore from the covariance's eigenvalues (the variances along the principal axes)."""
    v = torch.as_tensor(eigenvalues, dtype=torch.float64).abs().reshape(-1)
    n = v.numel()
    if n < 2:
        raise InputError("IsoScore needs at least 2 dimensions.")
    norm = torch.linalg.vector_norm(v)
    if not torch.isfinite(norm) or norm == 0:
        raise InputError("The point cloud has no variance (all points equal): IsoScore is undefined.")
    v_hat = v * math.sqrt(n) / norm
    delta = torch.linalg.vector_norm(v_hat - 1) / math.sqrt(2 * (n - math.sqrt(n)))
    score = ((n - delta**2 * (n - math.sqrt(n))) ** 2 - n) / (n * (n - 1))
    return float(score)


def _check_cov(cov) -> torch.Tensor:
    c = torch.as_tensor(cov).detach().to(torch.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise InputError(f"A covariance must be a square matrix, not shape {tuple(c.shape)}.")
    if not torch.isfinite(c).all():
        raise InputError("The covariance contains NaN or infinite values.")
    return c


def isoscore_from_cov(cov) -> float:
    c = _check_cov(cov)
    return isoscore_from_eigenvalues(torch.linalg.eigvalsh((c + c.T) / 2))


def isoscore(points) -> float:
    """IsoScore of points [N, n] (Rudman et al. 2022)."""
    return isoscore_from_cov(covariance(points))


def shrunk_cov(cov, zeta: float = 0.2, c0="scaled_identity") -> torch.Tensor:
    """(1 − ζ)·C + ζ·C0 with C0 = "scaled_identity" ((tr C/n)·I), "identity" or a matrix."""
    c = _check_cov(cov)
    zeta = check_zeta(zeta)
    n = c.shape[0]
    if isinstance(c0, str):
        if c0 == "identity":
            target = torch.eye(n, dtype=torch.float64, device=c.device)
        elif c0 == "scaled_identity":
            target = torch.eye(n, dtype=torch.float64, device=c.device) * (torch.trace(c) / n)
        else:
            raise InputError(f"Unknown C0 {c0!r}: choose from {', '.join(C0_CHOICES)} or give a matrix.")
    else:
        target = _check_cov(c0).to(c.device)
        if target.shape != c.shape:
            raise InputError(f"C0 has shape {tuple(target.shape)}, the covariance {tuple(c.shape)}.")
    return (1 - zeta) * c + zeta * target


def check_zeta(zeta) -> float:
    if isinstance(zeta, bool) or not isinstance(zeta, (int, float)) or not 0 <= zeta <= 1:
        raise InputError(f"ζ (zeta) must lie in [0, 1], not {zeta!r}.")
    return float(zeta)


def isoscore_star(points, zeta: float = 0.2, c0="scaled_identity") -> float:
    """IsoScore* (Rudman & Eickhoff 2023): IsoScore of (1 − ζ)·C + ζ·C0."""
    return isoscore_from_cov(shrunk_cov(covariance(points), zeta, c0))


def random_pairs(n: int, n_pairs: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_pairs`` seeded pairs (i, j) of distinct indices below n, uniform."""
    if n_pairs < 1:
        raise InputError("n_pairs must be at least 1.")
    g = torch.Generator().manual_seed(int(seed))
    i = torch.randint(n, (n_pairs,), generator=g)
    j = torch.randint(n - 1, (n_pairs,), generator=g)
    return i, j + (j >= i).long()  # j distinct from i, uniform over the others


def pair_cosines(points: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Mean cosine over the pairs (i[p], j[p]) of points [N, ..., n], for every middle index
    at once (clouds side by side: [N, G, n] gives [G]), in float64. Σ_p x̂_i·x̂_j =
    Σ_rows (P X̂) ∘ X̂ with P the sparse N × N pair-count matrix: no [n_pairs, n] gather."""
    x = points.double().cpu()
    xh = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    n = x.shape[0]
    counts = torch.sparse_coo_tensor(torch.stack([i, j]), torch.ones(i.numel(), dtype=torch.float64), (n, n),
                                     check_invariants=True)
    flat = xh.reshape(n, -1)
    return ((torch.sparse.mm(counts.coalesce(), flat) * flat).reshape(xh.shape).sum(-1).sum(0)) / i.numel()


def average_cosine(points, n_pairs: int | None = 10_000, seed: int = 0) -> float:
    """Mean cosine similarity of ``n_pairs`` seeded random pairs of distinct points (None:
    every distinct pair, exactly). Zero vectors count as cosine 0."""
    x = _points(points).double()
    n = x.shape[0]
    if n_pairs is None:
        xh = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
        s = xh.sum(0)
        diag = (xh.norm(dim=1) ** 2).sum()
        return float((s @ s - diag) / (n * (n - 1)))
    i, j = random_pairs(n, n_pairs, seed)
    return float(pair_cosines(x, i, j))


def partition_score(points, second_moment=None) -> float:
    """Mu & Viswanath's I(X) = min_u Z(u) / max_u Z(u), Z(u) = Σ_x exp(uᵀx), u over ±the
    eigenvectors of XᵀX (``second_moment``: XᵀX of a larger set the points sample, if known)."""
    x = _points(points).double()
    m = x.T @ x if second_moment is None else _check_cov(second_moment).to(x.device)
    _, vecs = torch.linalg.eigh((m + m.T) / 2)  # eigenvectors are the COLUMNS
    return _partition_with(x, vecs)


def _partition_with(x: torch.Tensor, vecs: torch.Tensor) -> float:
    """I(X) of points x [N, n] (float64) over ±the given eigenvectors (columns of vecs)."""
    proj = x @ vecs.to(x.device)  # [N, n]: uᵀx for every point and eigenvector
    log_z = torch.cat([torch.logsumexp(proj, 0), torch.logsumexp(-proj, 0)])
    return float(torch.exp(log_z.min() - log_z.max()))


def mean_pair_cosine(x: torch.Tensor) -> float:
    """Mean cosine over the pairs i ≠ j of one sequence's states x [T, d] (T ≥ 2)."""
    x = _points(x, "a sequence").double()
    xh = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
    s = xh.sum(0)
    t = x.shape[0]
    return float((s @ s - (xh * xh).sum()) / (t * (t - 1)))


def self_similarity(sequences: Sequence) -> float:
    """Within-sequence self-similarity as Su & Collier's reference code computes it: every
    ordered pair i ≠ j of every sequence pooled, Σ cos / Σ T(T − 1) (longer sequences weigh
    more); their isotropy is 1 − this. Sequences shorter than 2 tokens are refused."""
    if not len(sequences):
        raise InputError("No sequences were given.")
    num = den = 0.0
    for s in sequences:
        t = len(s)
        num += mean_pair_cosine(s) * t * (t - 1)
        den += t * (t - 1)
    return num / den


def check_multiple(multiple) -> float:
    if isinstance(multiple, bool) or not isinstance(multiple, (int, float)) or not multiple > 1:
        raise InputError(f"The outlier multiple must be a number > 1, not {multiple!r}.")
    return float(multiple)


def _outlier_ratios(var: np.ndarray, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Variance and |mean| over their averages along the last axis (0 where the average is 0)."""
    vm, mm = var.mean(-1, keepdims=True), mu.mean(-1, keepdims=True)
    vr = np.where(vm > 0, var / np.where(vm > 0, vm, 1), 0.0)
    mr = np.where(mm > 0, mu / np.where(mm > 0, mm, 1), 0.0)
    return vr, mr


def outlier_dimensions(variance, mean=None, multiple: float = 5.0) -> pd.DataFrame:
    """Dimensions whose variance exceeds ``multiple`` × the average variance, or whose |mean|
    exceeds ``multiple`` × the average |mean|: one row per such dimension, largest first."""
    multiple = check_multiple(multiple)
    var = np.asarray(variance, dtype=np.float64).reshape(-1)
    mu = np.zeros_like(var) if mean is None else np.abs(np.asarray(mean, dtype=np.float64).reshape(-1))
    if var.size != mu.size:
        raise InputError("variance and mean must have one value per dimension.")
    if not (np.isfinite(var).all() and np.isfinite(mu).all()):
        raise InputError("The variances or means contain NaN or infinite values.")
    vr, mr = _outlier_ratios(var, mu)
    hit = (vr > multiple) | (mr > multiple)
    idx = np.flatnonzero(hit)
    df = pd.DataFrame({"dim": idx, "variance": var[idx], "variance_ratio": vr[idx],
                       "abs_mean": mu[idx], "mean_ratio": mr[idx],
                       "by_variance": vr[idx] > multiple, "by_mean": mr[idx] > multiple})
    return df.sort_values(["variance_ratio", "mean_ratio"], ascending=False).reset_index(drop=True)


def star_from_eigenvalues(eigenvalues, zeta: float, c0: str = "scaled_identity") -> float:
    """IsoScore* from C's eigenvalues when C0 is a multiple of I: (1 − ζ)C + ζtI has
    eigenvalues (1 − ζ)λ + ζt (t = tr C / n, or 1 for ``c0="identity"``)."""
    ev = torch.as_tensor(eigenvalues, dtype=torch.float64)
    if c0 not in C0_CHOICES:
        raise InputError(f"Unknown C0 {c0!r}: choose from {', '.join(C0_CHOICES)}.")
    t = ev.sum() / ev.numel() if c0 == "scaled_identity" else 1.0
    return isoscore_from_eigenvalues((1 - check_zeta(zeta)) * ev + zeta * t)
