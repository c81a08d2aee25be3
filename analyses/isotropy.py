"""Isotropy of representations: IsoScore and its rivals on every layer (docs/isotropy.md#isoscore, docs/isotropy.md#self-similarity).

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

Streaming (:class:`CloudStats`): the analysis never holds a layer's activation cloud. Inside
the hook each padded batch is folded into a per-layer sum and sum of outer products (shifted
by the first batch's mean, to avoid cancellation with the huge means of residual streams):
x − K is written into a scratch buffer reused by every hook (padding zeroed, nothing copied
out), then ONE float32 GEMM per cloud (the upper block triangle of the symmetric product)
is added to a float64 sum kept as its packed upper triangle, O(d²/2) per layer;
``cov_dtype="float64"`` makes the products exact. The per-sequence sums of unit vectors
(self-similarity) are one batched product with the inverse norms. Average cosine, the
partition score's Z(u) and the 2-D PCA are computed on a seeded sample of ``n_sample`` tokens
per layer (the same tokens at every layer), kept exactly in the model's dtype on the host.
The hooks never wait for the device: the per-batch indices come from the lengths known on the
host, the sampled tokens are one ``index_select`` (from a GPU, a non-blocking copy into
pinned memory) and the self-similarity sums stay on the device until the pass is over.
Memory: (L + 2)·d(d + 1)/2 float64 sums + 2(L + 1)·n_sample·d floats (residual and
head-output samples), whatever the number of tokens, allocated before the pass. The fixed cost is one eigvalsh and one eigh of d × d per depth and batched
d_head × d_head ones per layer of heads, on the model's device unless ``linalg_device`` says otherwise.

Per-head outputs: a head's output is z_h W_O^h, a linear map of its d_head-dim z, so the
analysis accumulates z's statistics (d_head² per head) and maps them exactly:
C_out = W_O^hᵀ C_z W_O^h, mean_out = μ_z W_O^h, cos between outputs through W_O^h W_O^hᵀ.
A head's output spans at most d_head dimensions of d_model, so its IsoScore is at most
(d_head − 1)/(d_model − 1); ``isoscore_z`` (in the head's own z space) is reported beside it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np
import pandas as pd
import torch

from mechscope.probes import capture, hooknames
from mechscope.probes import contrastive as _contrastive  # noqa: F401  (registers the "contrastive" strategy)
from mechscope.probes.covariance import CloudStats, Workspace, packed_size  # noqa: F401  (CloudStats re-exported)
from mechscope.probes.errors import InputError, check_range
from mechscope.probes.heap import release_heap
from mechscope.probes.models import model_id
from mechscope.probes.results import Params, Result, analysis
from mechscope.probes.tokens import str_tokens, text_ids

C0_CHOICES = ("scaled_identity", "identity")
FINAL_NORM = "ln_final"  # the last block's output after the final norm (Hugging Face's hidden_states[-1])
SCORES = ("isoscore", "isoscore_star", "avg_cosine", "partition", "self_similarity", "isotropy_su")

# ---------------------------------------------------------------------------------------
# Pure scores


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


# ---------------------------------------------------------------------------------------
# Streaming statistics


def _unit_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ over real positions of x/||x||: x [B, T, ..., d], mask [B, T] → [B, ..., d]."""
    xh = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    m = mask.reshape(mask.shape + (1,) * (x.ndim - 2)).to(xh.dtype)
    return (xh * m).sum(1)


# ---------------------------------------------------------------------------------------
# Result


@dataclass(frozen=True)
class IsotropyResult(Result):
    """Scores per cloud (residual stream at every depth, every head's output, W_E, W_U)."""

    scores: pd.DataFrame  # one row per cloud
    clouds: tuple  # names of the rows of spectrum / dim_var / dim_mean
    spectrum: np.ndarray  # [C, d] covariance eigenvalues, descending
    dim_var: np.ndarray  # [C, d] per-dimension variance
    dim_mean: np.ndarray  # [C, d] per-dimension mean
    pca: np.ndarray  # [L+2, S, 2] sampled tokens projected on each depth's top-2 principal axes
    sample_class: np.ndarray  # [S] token class of each sampled token (object)
    sample_token: np.ndarray  # [S] token string (object)
    n_tokens: int = 0
    n_texts: int = 0

    kind = "isotropy"

    def resid(self) -> pd.DataFrame:
        return self.scores[self.scores["cloud"] == "resid"].reset_index(drop=True)

    def heads(self) -> pd.DataFrame:
        return self.scores[self.scores["cloud"] == "head"].reset_index(drop=True)

    def weights(self) -> pd.DataFrame:
        return self.scores[self.scores["cloud"].isin(["W_E", "W_U"])].reset_index(drop=True)

    def _cloud(self, name) -> int:
        if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
            n_depth = sum(1 for c in self.clouds if c not in ("W_E", "W_U"))
            check_range("depth", int(name), n_depth)
            return int(name)
        if name not in self.clouds:
            raise InputError(f"No cloud {name!r}: choose a depth 0..{len(self.clouds) - 3} or one of "
                             f"{', '.join(map(str, self.clouds))}.")
        return list(self.clouds).index(name)

    def outliers(self, cloud=0, multiple: float | None = None) -> pd.DataFrame:
        i = self._cloud(cloud)
        return outlier_dimensions(self.dim_var[i], self.dim_mean[i], self.params.outlier_multiple if multiple is None else multiple)

    def to_frame(self) -> pd.DataFrame:
        return self.scores

    # -- figures -------------------------------------------------------------------------
    def figure_curves(self):
        import plotly.express as px

        df = self.resid().melt(id_vars=["depth"], value_vars=list(SCORES), var_name="score", value_name="value")
        fig = px.line(df, x="depth", y="value", color="score", markers=True,
                      title="Isotropy of the residual stream by depth (0 = embeddings, l = after block l−1, last = after the final norm)")
        fig.update_layout(yaxis_title="score", xaxis_title="depth")
        return fig

    def figure_heads(self, score: str = "isoscore"):
        import plotly.graph_objects as go

        h = self.heads()
        if h.empty:
            return go.Figure().update_layout(title="No per-head scores (heads=False)")
        if score not in h.columns:
            raise InputError(f"No score {score!r}; choose from {', '.join(c for c in h.columns if c in SCORES + ('isoscore_z',))}.")
        m = h.pivot(index="layer", columns="head", values=score)
        fig = go.Figure(go.Heatmap(z=m.values, x=[f"H{c}" for c in m.columns], y=list(m.index), colorscale="Viridis",
                                   colorbar={"title": score}))
        fig.update_layout(title=f"Per-head output {score}", xaxis_title="head", yaxis_title="layer",
                          yaxis={"autorange": "reversed"})
        return fig

    def figure_spectrum(self, cloud=None):
        import plotly.graph_objects as go

        i = self._cloud(len([c for c in self.clouds if c not in ("W_E", "W_U")]) - 1 if cloud is None else cloud)
        ev = self.spectrum[i]
        out = self.outliers(i)
        fig = go.Figure(go.Scatter(x=np.arange(1, ev.size + 1), y=np.clip(ev, 1e-12, None), mode="lines", name="eigenvalue"))
        fig.update_layout(title=f"Covariance spectrum of {self.clouds[i]} ({len(out)} outlier dimensions: "
                                f"{', '.join(map(str, out['dim'].head(8).tolist()))})",
                          xaxis_title="principal component", yaxis_title="variance", yaxis_type="log")
        return fig

    def figure_outliers(self, cloud=None):
        import plotly.graph_objects as go

        i = self._cloud(len([c for c in self.clouds if c not in ("W_E", "W_U")]) - 1 if cloud is None else cloud)
        var = self.dim_var[i]
        ratio = var / var.mean()
        fig = go.Figure(go.Bar(x=np.arange(var.size), y=ratio, name="variance / mean variance"))
        fig.add_hline(y=self.params.outlier_multiple, line_dash="dot", annotation_text=f"{self.params.outlier_multiple:g}×")
        fig.update_layout(title=f"Per-dimension variance of {self.clouds[i]} (× the average)", xaxis_title="dimension",
                          yaxis_title="variance ratio", yaxis_type="log")
        return fig

    def figure_pca(self, depth: int | None = None):
        import plotly.express as px

        depth = self.pca.shape[0] - 1 if depth is None else depth
        check_range("depth", depth, self.pca.shape[0])
        xy = self.pca[depth]
        df = pd.DataFrame({"PC1": xy[:, 0], "PC2": xy[:, 1], "class": self.sample_class, "token": self.sample_token})
        return px.scatter(df, x="PC1", y="PC2", color="class", hover_data=["token"], opacity=0.6,
                          title=f"{self.clouds[depth]}: sampled tokens on the top-2 principal axes")

    def figure_weights(self):
        import plotly.express as px

        w = self.weights().melt(id_vars=["cloud"], value_vars=list(SCORES[:4]), var_name="score", value_name="value")
        return px.bar(w, x="score", y="value", color="cloud", barmode="group", title="Token embeddings W_E and unembedding W_U")

    def figures(self) -> dict:
        figs = {"curves": self.figure_curves(), "spectrum": self.figure_spectrum(), "outliers": self.figure_outliers(),
                "pca": self.figure_pca()}
        if not self.heads().empty:
            figs["heads"] = self.figure_heads()
        if not self.weights().empty:
            figs["weights"] = self.figure_weights()
        return figs


# ---------------------------------------------------------------------------------------
# The analysis


@dataclass(frozen=True)
class IsotropyParams(Params):
    """Parameters of :func:`isotropy`."""

    kind: ClassVar[str] = "isotropy"
    text_set: str = field(default="mixed", metadata={"help": "shipped text set (prose, code, numbers or mixed)"})
    n_texts: int = field(default=24, metadata={"help": "texts to use"})
    max_tokens: int = field(default=128, metadata={"help": "tokens per text"})
    texts: tuple[str, ...] | None = field(default=None, metadata={"help": "custom texts (instead of the text set)"})
    heads: bool = field(default=True, metadata={"help": "score every head's output"})
    weights: bool = field(default=True, metadata={"help": "score W_E and W_U"})
    n_sample: int = field(default=1000, metadata={"help": "sampled tokens per layer (average cosine, partition, PCA)"})
    n_pairs: int = field(default=10_000, metadata={"help": "random pairs for the average cosine"})
    zeta: float = field(default=0.2, metadata={"help": "IsoScore* shrinkage ζ"})
    c0: str = field(default="scaled_identity", metadata={"help": "IsoScore* target C0: scaled_identity or identity"})
    outlier_multiple: float = field(default=5.0, metadata={"help": "outlier: variance or |mean| > this × the average"})
    cov_dtype: str = field(default="float32", metadata={"help": "dtype of each batch's covariance product (float32/float64)"})
    seed: int = field(default=0, metadata={"help": "seed of the token sample and the random pairs"})
    batch_size: int = field(default=8, metadata={"help": "texts per forward pass"})

    def __post_init__(self):
        if self.texts is not None:
            object.__setattr__(self, "texts", tuple(self.texts))
        check_zeta(self.zeta)
        check_multiple(self.outlier_multiple)
        if self.c0 not in C0_CHOICES:
            raise InputError(f"Unknown C0 {self.c0!r}: choose from {', '.join(C0_CHOICES)}.")
        if self.cov_dtype not in ("float32", "float64"):
            raise InputError("cov_dtype must be float32 or float64.")
        for name in ("n_texts", "max_tokens", "n_sample", "n_pairs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (2 if name in ("max_tokens", "n_sample") else 1):
                raise InputError(f"{name} must be an integer >= {2 if name in ('max_tokens', 'n_sample') else 1}, not {v!r}.")


def texts_for(params) -> list[str]:
    if params.texts is not None:
        texts = list(params.texts)
    else:
        from mechscope.analyses.sinks import load_text_set

        sets = load_text_set(params.text_set, params.n_texts)
        texts = [t for ts in sets.values() for t in ts]
    if not texts:
        raise InputError("No texts to score.")
    return texts


def encode_texts(model, texts, max_tokens: int) -> list[list[int]]:
    seqs = []
    for t in texts:
        if isinstance(t, str) and not t.strip():
            raise InputError("A text in the set is empty.")
        ids = text_ids(model, t)[:max_tokens] if isinstance(t, str) else [int(i) for i in t][:max_tokens]
        if len(ids) < 2:
            raise InputError("Every text needs at least 2 tokens (within-sequence similarity compares token pairs).")
        seqs.append(ids)
    return seqs


def sample_slots(lengths: Sequence[int], n_sample: int, seed: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """A seeded sample of min(n_sample, total) token positions: {text index: (positions, slots)}."""
    total = int(sum(lengths))
    g = torch.Generator().manual_seed(int(seed))
    pick = torch.randperm(total, generator=g)[: min(n_sample, total)].sort().values
    offsets = np.cumsum([0] + list(lengths))
    out: dict[int, tuple[list, list]] = {}
    for slot, flat in enumerate(pick.tolist()):
        i = int(np.searchsorted(offsets, flat, side="right") - 1)
        out.setdefault(i, ([], []))
        out[i][0].append(flat - int(offsets[i]))
        out[i][1].append(slot)
    return {i: (torch.tensor(p), torch.tensor(s)) for i, (p, s) in out.items()}


class _BatchPlan:
    """Per-batch indices shared by every site of one pass, worked out once per batch on the
    host from the lengths (no device sync): the number of real positions, the flat indices
    b·T + t of the sampled tokens, the rows of the sample buffers they go to, T(T − 1) per
    sequence. Sampled tokens are stored in the order the batches come (each batch's picks a
    contiguous block of rows, written by one ``index_select``) and put back in slot order
    when a cloud is scored (``slot_of_row``)."""

    def __init__(self, n_seq: int, n_sample: int, picks):
        self.picks = picks
        self.pairs = torch.zeros(n_seq, dtype=torch.float64)  # T(T − 1) per sequence
        self.slot_of_row = torch.full((n_sample,), -1, dtype=torch.long)
        self.filled = 0
        self._batch = None
        self._order = None

    def for_batch(self, batch, device) -> "_BatchPlan":
        if batch is self._batch:
            return self
        lens = batch.lengths_list()
        t = int(batch.tokens.shape[1])
        src, slots = [], []
        for row, (i, n) in enumerate(zip(batch.index, lens)):
            self.pairs[i] = float(n * (n - 1))
            if i in self.picks:
                pos, sl = self.picks[i]
                src.append(pos + row * t)
                slots.append(sl)
        self.lens, self.t, self.n_real = lens, t, sum(lens)
        k = sum(len(sl) for sl in slots)
        self.rows = slice(self.filled, self.filled + k)
        if k:
            self.slot_of_row[self.rows] = torch.cat(slots)
            self.src = torch.cat(src).to(device)
        self.filled += k
        self.k = k
        self.index = torch.tensor(batch.index, device=device)
        self._real_index, self._device, self._batch, self._order = None, device, batch, None
        return self

    @property
    def real_index(self) -> torch.Tensor:
        """Flat indices b·T + t of the real positions, in order (the first batch's shift)."""
        if self._real_index is None:
            idx = [torch.arange(n) + row * self.t for row, n in enumerate(self.lens)]
            self._real_index = torch.cat(idx).to(self._device)
        return self._real_index

    def order(self) -> torch.Tensor:
        """Buffer row of each slot (slot order from batch order)."""
        if self._order is None:
            if self.filled != self.slot_of_row.numel():
                raise RuntimeError(f"{self.filled} of {self.slot_of_row.numel()} sampled tokens were seen.")
            self._order = torch.argsort(self.slot_of_row)
        return self._order


class _SiteState:
    """Streaming state of one hook site: G clouds of dimension d (O(G·d²) + the token sample).

    Per hook call, with no host sync: the covariance sums (one GEMM per cloud folded into
    packed float64 sums, :meth:`CloudStats.add_padded`), the per-sequence sum of unit
    vectors (one batched product with the inverse norms; the mean cosines stay on the
    model's device) and the sampled tokens' vectors (one ``index_select`` into the host
    buffer; from a GPU a non-blocking copy into pinned memory). Temporaries live in the shared
    :class:`Workspace`; the per-batch indices in the shared :class:`_BatchPlan`."""

    def __init__(self, n_seq: int, n_sample: int, dtype: torch.dtype, gram: torch.Tensor | None = None,
                 ws: Workspace | None = None, plan: _BatchPlan | None = None, bufs: dict | None = None):
        """``bufs``: preallocated views (see :class:`_preallocate`): "sums" [G, d(d + 1)/2],
        "s" and "shift" [G, d], "selfsim" [n_seq, G] (float64, the model's device), "sample"
        [S, G, d] (the model's dtype, host) and "gram_x" [G, d, d] (the model's dtype and
        device) for head outputs; whatever is missing is made on the first batch. ``plan``:
        shared by the sites of one pass (one of its own otherwise)."""
        bufs = bufs or {}
        self.stats = CloudStats(dtype, m=bufs.get("sums"), packed=True, s=bufs.get("s"), shift=bufs.get("shift"))
        self.selfsim = None  # [n_seq, G] mean within-sequence cosine, on the activations' device
        self._selfsim_buf = bufs.get("selfsim")
        self.n_seq, self.n_sample = n_seq, n_sample
        self._buf = bufs.get("sample")  # [S, G, d] in the activations' dtype, rows in batch order
        self.gram = gram  # [G, d, d]: cosines measured through W W^T (head outputs) if given
        self._gram_x = None  # gram in the activations' dtype and device
        if gram is not None and bufs.get("gram_x") is not None:
            self._gram_x = bufs["gram_x"].copy_(gram)
        self.ws = ws or Workspace()
        self.plan = plan
        self._pending = False  # a non-blocking copy into self._buf may be in flight

    def reserve(self, n: int, g: int, d: int, dtype: torch.dtype, device) -> None:
        """Make the scratch buffers for batches of up to n positions before the pass."""
        self.stats.reserve(self.ws, n, g, d, device)
        if self.gram is not None:
            self.ws.get("gram_xg", (g, n, d), dtype, device)

    @property
    def pairs(self) -> torch.Tensor:
        return self.plan.pairs

    def add(self, x: torch.Tensor, batch, picks) -> None:
        """x [B, T, G, d] (padded); fold the batch in."""
        x = x.detach()
        b, t, g, d = x.shape
        if self.plan is None:
            self.plan = _BatchPlan(self.n_seq, self.n_sample, picks)
        plan = self.plan.for_batch(batch, x.device)
        mask = batch.mask
        self.stats.add_padded(x, mask, self.ws, n_real=plan.n_real,
                              real_index=plan.real_index if self.stats.shift is None else None)
        if self.selfsim is None:
            buf = self._selfsim_buf
            if buf is not None and buf.shape == (self.n_seq, g) and buf.device == x.device:
                self.selfsim = buf.fill_(float("nan"))
            else:
                self.selfsim = torch.full((self.n_seq, g), float("nan"), dtype=torch.float64, device=x.device)
            if self._buf is None or self._buf.shape != (self.n_sample, g, d) or self._buf.dtype != x.dtype:
                self._buf = torch.zeros(self.n_sample, g, d, dtype=x.dtype,  # the model's dtype, on the host
                                        pin_memory=x.device.type == "cuda")
        # unit-vector sums in the activations' dtype (float32: ~1e-7 relative on a sum of at
        # most n_ctx unit vectors), the per-sequence mean cosine in float64
        flat = x.reshape(b * t, g, d)
        if self.gram is None:
            norms = torch.linalg.vector_norm(x, dim=-1)  # [B, T, G]
        else:  # cosines of x W: ||xW||² = x (W Wᵀ) xᵀ
            if self._gram_x is None:
                self._gram_x = self.gram.to(x.device, x.dtype)
            gram = self._gram_x
            xg = self.ws.get("gram_xg", (g, b * t, d), x.dtype, x.device)
            fg = flat.permute(1, 0, 2)  # [G, n, d]
            torch.bmm(fg, gram, out=xg)
            norms = xg.mul_(fg).sum(-1).clamp_min(0).sqrt().T.reshape(b, t, g)
        inv = mask[:, :, None].to(x.dtype) / norms.clamp_min(1e-30)  # [B, T, G], 0 on padding
        # Σ_t x̂_t per sequence and cloud: [B, G, T] @ [B, T, G·d], the diagonal blocks
        s = torch.bmm(inv.transpose(1, 2), x.reshape(b, t, g * d)).view(b, g, g, d)
        s = s.diagonal(dim1=1, dim2=2).permute(0, 2, 1)  # [B, G, d]
        if self.gram is None:
            ss = (s * s).sum(-1).double()
        else:
            ss = (torch.einsum("bgd,gde->bge", s, gram) * s).sum(-1).double()
        tl = batch.lengths.to(ss.device).double()[:, None]
        self.selfsim.index_copy_(0, plan.index, (ss - tl) / (tl * (tl - 1)))
        if plan.k:
            dst = self._buf[plan.rows]  # contiguous rows of the host buffer
            if dst.device == x.device:
                torch.index_select(flat, 0, plan.src, out=dst)
            else:
                dst.copy_(flat.index_select(0, plan.src), non_blocking=True)
                self._pending = True

    def _wait(self) -> None:
        if self._pending:
            torch.cuda.synchronize()
            self._pending = False

    @property
    def sample(self) -> torch.Tensor:
        """The sampled tokens [S, G, d] in slot order (a new tensor, the activations' dtype)."""
        self._wait()
        return self._buf.index_select(0, self.plan.order())

    def pooled_selfsim(self, g: int = 0) -> float:
        """Σ over sequences of Σ_{i≠j} cos / Σ T(T − 1) (the reference's pooling)."""
        w = self.pairs
        return float((self.selfsim[:, g].cpu() * w).sum() / w.sum())


def star_from_eigenvalues(eigenvalues, zeta: float, c0: str = "scaled_identity") -> float:
    """IsoScore* from C's eigenvalues when C0 is a multiple of I: (1 − ζ)C + ζtI has
    eigenvalues (1 − ζ)λ + ζt (t = tr C / n, or 1 for ``c0="identity"``)."""
    ev = torch.as_tensor(eigenvalues, dtype=torch.float64)
    if c0 not in C0_CHOICES:
        raise InputError(f"Unknown C0 {c0!r}: choose from {', '.join(C0_CHOICES)}.")
    t = ev.sum() / ev.numel() if c0 == "scaled_identity" else 1.0
    return isoscore_from_eigenvalues((1 - check_zeta(zeta)) * ev + zeta * t)


def _partitions(sample: torch.Tensor, vecs: torch.Tensor, null_dims: bool = False) -> torch.Tensor:
    """Partition scores of G clouds at once: samples [G, S, n], eigenvectors [G, n, n]
    (columns). ``null_dims``: XᵀX also has eigenvectors orthogonal to every point, where
    Z(u) = N."""
    proj = torch.bmm(sample, vecs)  # [G, S, n]: uᵀx for every point and eigenvector
    log_z = torch.cat([torch.logsumexp(proj, 1), torch.logsumexp(-proj, 1)], 1)  # [G, 2n]
    if null_dims:
        log_z = torch.cat([log_z, torch.full_like(log_z[:, :1], math.log(sample.shape[1]))], 1)
    return torch.exp(log_z.min(1).values - log_z.max(1).values)


def _sym(m: torch.Tensor) -> torch.Tensor:
    return (m + m.transpose(-1, -2)) / 2


def _rows(evals, var, mean, part_vecs, sample, selfsims, params, pairs, null_dims: bool = False) -> list[dict]:
    """Every score of G clouds at once: covariance eigenvalues [G, n] (all n of them),
    per-dimension variance and mean [G, d], the eigenvectors of XᵀX [G, m, m], a sample of
    the points in those coordinates [S, G, m], the pooled self-similarities (G floats) and
    the seeded pairs for the average cosine."""
    var_np, mu_np = var.cpu().numpy(), np.abs(mean.cpu().numpy())
    if not (np.isfinite(var_np).all() and np.isfinite(mu_np).all()):
        raise InputError("The variances or means contain NaN or infinite values.")
    vr, mr = _outlier_ratios(var_np, mu_np)
    by_var, by_mean = vr > params.outlier_multiple, mr > params.outlier_multiple
    cos = pair_cosines(sample, *pairs)
    part = _partitions(sample.transpose(0, 1), part_vecs, null_dims).cpu()
    rows = []
    for g in range(evals.shape[0]):
        rows.append({
            "isoscore": isoscore_from_eigenvalues(evals[g]),
            "isoscore_star": star_from_eigenvalues(evals[g], params.zeta, params.c0),
            "avg_cosine": float(cos[g]),
            "partition": float(part[g]),
            "self_similarity": selfsims[g],
            "isotropy_su": 1 - selfsims[g],
            "n_outlier_var": int(by_var[g].sum()),
            "n_outlier_mean": int(by_mean[g].sum()),
            "outlier_dims": ",".join(map(str, np.flatnonzero(by_var[g] | by_mean[g]).tolist()[:32])),
        })
    return rows


def top_eigenvectors(cov: torch.Tensor, k: int = 2, tol: float = 1e-6, max_iters: int = 200,
                     seed: int = 0) -> torch.Tensor:
    """The top-k eigenvectors of a symmetric PSD matrix [d, k] (columns, descending), by
    subspace iteration on 4k vectors with a Rayleigh–Ritz step, stopped when the top k
    residuals ||C v − λv|| fall below ``tol`` × λ_max: O(d²k) per iteration instead of a full
    O(d³) decomposition (a few iterations when the spectrum is dominated by a few
    directions, as in residual streams). Used only to draw the 2-D PCA."""
    d = cov.shape[0]
    m = min(d, 4 * k)
    g = torch.Generator().manual_seed(seed)
    v = torch.linalg.qr(torch.randn(d, m, generator=g, dtype=cov.dtype).to(cov.device)).Q
    for _ in range(max_iters):
        cv = cov @ v
        evals, w = torch.linalg.eigh(v.T @ cv)  # Rayleigh–Ritz on span(v), ascending
        top = w[:, -k:]
        res = torch.linalg.vector_norm(cv @ top - (v @ top) * evals[-k:], dim=0)
        if bool((res <= tol * evals[-1].abs().clamp_min(1e-300)).all()):
            break
        v = torch.linalg.qr(cv).Q
    return (v @ w)[:, torch.argsort(evals, descending=True)[:k]]


def _full_cloud(cov, mean, second, sample, selfsim, params, pairs=None, with_pvecs: bool = False):
    """Scores of a cloud whose covariance is held in full: one eigvalsh of C (IsoScore,
    IsoScore*, the spectrum), one eigh of XᵀX (partition score), the top-2 principal axes by
    subspace iteration (for the PCA drawing). Everything runs on ``cov``'s device.
    ``with_pvecs``: also return the eigenvectors of XᵀX."""
    evals = torch.linalg.eigvalsh(_sym(cov))  # ascending
    _, pvecs = torch.linalg.eigh(_sym(second))
    if pairs is None:
        pairs = random_pairs(sample.shape[0], params.n_pairs, params.seed)
    row = _rows(evals[None], torch.diagonal(cov)[None], mean[None], pvecs[None], sample[:, None], [selfsim],
                params, pairs)[0]
    out = (row, evals.flip(0), top_eigenvectors(cov))
    return out + (pvecs,) if with_pvecs else out


def _head_rows(st: "_SiteState", w_o: torch.Tensor, layer: int, params, pairs, device="cpu") -> list[dict]:
    """Scores of one layer's head outputs x = z W (W = W_O^h [d_head, d_model]) from z's
    statistics, all heads at once. With Wᵀ = Q R (Q orthonormal, R the Cholesky factor of
    W Wᵀ = Rᵀ R), x = (z Rᵀ) Qᵀ: the outputs ARE the points y = z Rᵀ in the orthonormal basis
    Q of the head's span, so covariance, cosines and the eigenvectors of XᵀX carry over;
    the other d_model − r eigenvalues are 0 (and Z(u) = N on those directions). The linear
    algebra runs on ``device`` (float64)."""
    w = w_o.double().to(device)  # [H, d_head, d_model]
    h, dh, d = w.shape
    stats = st.stats.to(device, full=True)
    cov_z, mean_z, sec_z = stats.cov(), stats.mean(), stats.second_moment()
    r, info = torch.linalg.cholesky_ex(st.gram.to(w.device), upper=True)  # W Wᵀ = Rᵀ R, [H, dh, dh]
    for k in torch.nonzero(info).reshape(-1).tolist():  # W_O^h rank-deficient: its row space's basis
        r[k] = torch.linalg.qr(w[k].T).R
    cov_y = _sym(r @ cov_z @ r.transpose(1, 2))
    sec_y = _sym(r @ sec_z @ r.transpose(1, 2))
    ev_y = torch.linalg.eigvalsh(cov_y)  # [H, dh]
    evals = torch.cat([ev_y, ev_y.new_zeros(h, d - dh)], 1)
    _, pv = torch.linalg.eigh(sec_y)
    sample = torch.einsum("shd,hed->she", st.sample.double().to(w.device), r)  # y = z Rᵀ, [S, H, dh]
    var = ((cov_z @ w) * w).sum(1)  # diag(Wᵀ C_z W), [H, d_model]
    mean = torch.einsum("hd,hde->he", mean_z, w)
    rows = _rows(evals, var, mean, pv, sample, [st.pooled_selfsim(k) for k in range(h)], params, pairs,
                 null_dims=d > dh)
    ev_z = torch.linalg.eigvalsh(_sym(cov_z))
    site = hooknames.name("z", layer)
    return [{"cloud": "head", "depth": layer + 1, "layer": layer, "head": k, "site": site, "n_points": st.stats.n,
             **row, "isoscore_z": isoscore_from_eigenvalues(ev_z[k])} for k, row in enumerate(rows)]


class _preallocate:
    """The long-lived state of every cloud group in a few allocations made before the forward
    pass (not interleaved with the activations: long-lived tensors made during the first batch
    sit between the activations and keep the heap from shrinking, which cost more than the
    state itself). A float64 block on the model's device holds, per group, the packed sums
    [G, d(d + 1)/2], s and shift [G, d] and the self-similarities [n_seq, G]; a block in the
    model's dtype on the host (pinned when the model is on a GPU, for non-blocking copies)
    holds the token samples [S, G, d]; head groups get W Wᵀ in the model's dtype on the
    device. ``n_resid`` groups of (1, d) then the given (G, d) groups; ``bufs(i)`` gives
    group i's views."""

    def __init__(self, n_resid: int, kinds: list[tuple[int, int]], n_s: int, n_seq: int, device, dtype):
        self.shapes = [kinds[0]] * n_resid + kinds[1:]
        self.n_s, self.n_seq = n_s, n_seq
        f64 = [g * packed_size(d) + 2 * g * d + n_seq * g for g, d in self.shapes]
        grams = [g * d * d if i >= n_resid else 0 for i, (g, d) in enumerate(self.shapes)]
        smp = [n_s * g * d for g, d in self.shapes]
        self._f64 = torch.zeros(sum(f64), dtype=torch.float64, device=device)
        self._gram = torch.zeros(sum(grams), dtype=dtype, device=device)
        self._smp = torch.zeros(sum(smp), dtype=dtype, pin_memory=torch.device(device).type == "cuda")
        self._o = [np.cumsum([0] + v).tolist() for v in (f64, grams, smp)]

    def bufs(self, i: int) -> dict:
        g, d = self.shapes[i]
        o, og, os_ = (x[i] for x in self._o)
        out = {}
        for name, shape in (("sums", (g, packed_size(d))), ("s", (g, d)), ("shift", (g, d)), ("selfsim", (self.n_seq, g))):
            n = shape[0] * shape[1]
            out[name] = self._f64[o : o + n].view(shape)
            o += n
        out["sample"] = self._smp[os_ : os_ + self.n_s * g * d].view(self.n_s, g, d)
        if self._o[1][i + 1] > og:
            out["gram_x"] = self._gram[og : og + g * d * d].view(g, d, d)
        return out


def weight_clouds(model) -> dict[str, torch.Tensor]:
    """W_E rows (one point per token) and W_U columns (one point per token)."""
    return {"W_E": model.W_E.detach(), "W_U": model.W_U.detach().T}


# Where the per-cloud linear algebra runs (float64); None: the model's device. Measured
# (benchmarks/RESULTS.md, wave 6): on an H100, 64 eigvalsh of 576 × 576 take 352 ms against
# 1,080 ms on its 16-core host, and the scores agree to 4e-12 relative.
LINALG_DEVICE: str | None = None


@analysis(IsotropyParams)
def isotropy(model, params: IsotropyParams, progress: Callable[[int, int], None] | None = None,
             linalg_device: str | None = None) -> IsotropyResult:
    """Every isotropy score for the residual stream at every depth (embeddings, then after each
    block), every head's output, W_E and W_U, streamed over a text set.

    The streaming pass runs on the model's device; the per-cloud linear algebra (eigvalsh and
    eigh of d × d, the batched per-head ones, the PCA axes, the sampled scores) runs on
    ``linalg_device`` (default :data:`LINALG_DEVICE`, else the model's device; the results
    agree to float64 rounding either way). The weight clouds' N × d products stay on the
    model's device."""
    dev = torch.device(linalg_device or LINALG_DEVICE or model.cfg.device)
    texts = texts_for(params)
    seqs = encode_texts(model, texts, params.max_tokens)
    L = model.cfg.n_layers
    dtype = torch.float64 if params.cov_dtype == "float64" else torch.float32
    lengths = [len(s) for s in seqs]
    picks = sample_slots(lengths, params.n_sample, params.seed)
    n_s = min(params.n_sample, sum(lengths))
    ws = Workspace()  # scratch shared by every site: the hooks run one at a time
    resid_sites = [hooknames.name("resid_pre", 0)] + [hooknames.name("resid_post", l) for l in range(L)]
    # the long-lived state, allocated before the forward pass (see _preallocate)
    d, h, dh = model.cfg.d_model, model.cfg.n_heads, model.cfg.d_head
    big = _preallocate(L + 2, [(1, d)] + ([(h, dh)] * L if params.heads else []), n_s, len(seqs), model.cfg.device,
                       model.cfg.dtype)
    plan = _BatchPlan(len(seqs), n_s, picks)  # per-batch indices, shared by every site
    n_max = min(params.batch_size, len(seqs)) * max(lengths)  # the first batch holds the longest texts

    def state(i, gram=None):
        st = _SiteState(len(seqs), n_s, dtype, gram=gram, ws=ws, plan=plan, bufs=big.bufs(i))
        st.reserve(n_max, *big.shapes[i], model.cfg.dtype, model.cfg.device)
        return st

    states = {s: state(i) for i, s in enumerate(resid_sites)}
    states[FINAL_NORM] = state(L + 1)
    if params.heads:
        for l in range(L):
            w = model.blocks[l].attn.W_O.detach().double()  # [H, d_head, d_model]
            states[hooknames.name("z", l)] = state(L + 2 + l, gram=w @ w.transpose(1, 2))
    del big

    last = resid_sites[-1]  # hidden_states[-1] (FINAL_NORM): the last block after ln_final

    def reducer(t, where, batch):
        x = t if t.ndim == 4 else t[:, :, None, :]
        states[where].add(x, batch, picks)
        if where == last:
            from mechscope.probes.readout import final_norm

            states[FINAL_NORM].add(final_norm(model, t)[:, :, None, :], batch, picks)

    capture.run(model, seqs, reducers={s: reducer for s in states if s != FINAL_NORM}, batch_size=params.batch_size,
                progress=progress)
    ws.clear()
    release_heap()
    pairs = random_pairs(n_s, params.n_pairs, params.seed)  # the same seeded pairs for every cloud

    rows, clouds, spectra, dvar, dmean, pca = [], [], [], [], [], []
    for depth, s in enumerate(resid_sites + [FINAL_NORM]):
        st = states.pop(s)
        stats = st.stats.to(dev, full=True)
        cov, mean, second = stats.cov()[0], stats.mean()[0], stats.second_moment()[0]
        sample = st.sample[:, 0].double().to(dev)
        row, ev, vecs = _full_cloud(cov, mean, second, sample, st.pooled_selfsim(0), params, pairs)
        layer = L - 1 if s == FINAL_NORM else hooknames.site(s).layer
        rows.append({"cloud": "resid", "depth": depth, "layer": layer, "head": -1, "site": s,
                     "n_points": st.stats.n, **row})
        clouds.append("embeddings" if depth == 0 else "final norm" if s == FINAL_NORM else f"after block {depth - 1}")
        spectra.append(ev.cpu().numpy())
        dvar.append(torch.diagonal(cov).cpu().numpy().copy())  # a copy: a view would keep all of cov
        dmean.append(mean.cpu().numpy())
        pca.append(((sample - mean) @ vecs[:, :2]).cpu().numpy())
        del st, stats, cov, second, sample
        release_heap()
    if params.heads:
        for l in range(L):
            rows += _head_rows(states.pop(hooknames.name("z", l)), model.blocks[l].attn.W_O.detach(), l, params, pairs,
                               dev)
    if params.weights:
        for name, x in weight_clouds(model).items():
            x = x.double()
            cov = covariance(x).to(dev)
            g = torch.Generator().manual_seed(params.seed)
            idx = torch.randperm(x.shape[0], generator=g)[:n_s]
            row, ev, _, pvecs = _full_cloud(cov, x.mean(0).to(dev), (x.T @ x).to(dev), x[idx.to(x.device)].to(dev),
                                            float("nan"), params, with_pvecs=True)
            row["partition"] = _partition_with(x, pvecs)  # every token: no sampling needed
            rows.append({"cloud": name, "depth": -1, "layer": -1, "head": -1, "site": name, "n_points": x.shape[0], **row})
            clouds.append(name)
            spectra.append(ev.cpu().numpy())
            dvar.append(torch.diagonal(cov).cpu().numpy().copy())  # a copy: a view would keep all of cov
            dmean.append(x.mean(0).cpu().numpy())

    tok, cls = _sample_labels(model, seqs, picks, n_s)
    return IsotropyResult(
        model_id=model_id(model), params=params, scores=pd.DataFrame(rows), clouds=tuple(clouds),
        spectrum=np.stack(spectra), dim_var=np.stack(dvar), dim_mean=np.stack(dmean),
        pca=np.stack(pca).astype(np.float32), sample_class=cls, sample_token=tok,
        n_tokens=int(sum(lengths)), n_texts=len(seqs),
    )


# ---------------------------------------------------------------------------------------
# Rudman et al.'s sanity clouds


def rudman_clouds(n: int = 10, n_points: int = 5000, seed: int = 0) -> dict[str, np.ndarray]:
    """The clouds of Rudman et al. 2022's tests, in n dimensions: an isotropic Gaussian, all
    variance in one dimension, k of n dimensions used equally (k = n/2), the isotropic cloud
    shifted far from the origin, and rescaled (all ×100; one dimension ×10)."""
    g = np.random.default_rng(seed)
    iso = g.standard_normal((n_points, n))
    one = np.zeros((n_points, n))
    one[:, 0] = g.standard_normal(n_points)
    k = n // 2
    half = np.zeros((n_points, n))
    half[:, :k] = g.standard_normal((n_points, k))
    shifted = iso + 20.0
    scaled = iso * 100.0
    stretched = iso.copy()
    stretched[:, 0] *= 10
    return {"isotropic": iso, "one dimension": one, f"{k} of {n} dimensions": half, "isotropic + 20": shifted,
            "isotropic × 100": scaled, "dimension 0 × 10": stretched}


def rudman_table(n: int = 10, n_points: int = 5000, seed: int = 0) -> pd.DataFrame:
    rows = []
    for name, x in rudman_clouds(n, n_points, seed).items():
        rows.append({"cloud": name, "isoscore": isoscore(x), "isoscore_star": isoscore_star(x),
                     "avg_cosine": average_cosine(x, None), "partition": partition_score(x)})
    return pd.DataFrame(rows)


def figure_rudman(n: int = 10, n_points: int = 5000, seed: int = 0):
    import plotly.express as px

    df = rudman_table(n, n_points, seed).melt(id_vars=["cloud"], var_name="score", value_name="value")
    return px.bar(df, x="cloud", y="value", color="score", barmode="group",
                  title=f"Rudman et al.'s sanity clouds ({n} dimensions): only IsoScore ignores the mean and the scale")


# ---------------------------------------------------------------------------------------
# Whitening (docs/isotropy.md#whitening): fitted on one text set, applied to another


@functools.lru_cache(maxsize=4)
def _corpus_counts(mid: str, model) -> tuple[np.ndarray, int]:
    from mechscope.probes import datasets

    counts = np.zeros(model.cfg.d_vocab, dtype=np.int64)
    texts = [t for s in datasets.text_sets() if s != "mixed" for t in datasets.load_texts(s)]
    texts += [datasets.load_long_text(n) for n in datasets.long_texts()]
    for t in texts:
        np.add.at(counts, np.asarray(text_ids(model, t), dtype=np.int64), 1)
    return counts, int(counts.sum())


def corpus_frequencies(model) -> np.ndarray:
    """p(w): each token's relative frequency in the shipped corpus (every text set and long
    text under ``data/``), tokenised by ``model``'s tokenizer."""
    counts, total = _corpus_counts(model_id(model), model)
    return counts / max(total, 1)


def zipf_weights(seqs: Sequence[Sequence[int]], freq: np.ndarray) -> list[torch.Tensor]:
    """Per-token weights p(w) / count_fit(w): every type in the fitting set weighs its corpus
    frequency in total, however often the fitting texts use it."""
    flat = np.concatenate([np.asarray(s) for s in seqs])
    fit_counts = np.bincount(flat, minlength=freq.size)
    w = freq / np.maximum(fit_counts, 1)
    if w[flat].sum() == 0:
        raise InputError("None of the fitting set's tokens occurs in the shipped corpus: Zipfian weights are all 0.")
    return [torch.tensor(w[np.asarray(s)]) for s in seqs]


@dataclass(frozen=True)
class WhiteningResult(Result):
    """Every score before and after each whitening, on the fitting set and the held-out set."""

    scores: pd.DataFrame  # rows: set × method
    site: str
    removed_dims: tuple
    pca: np.ndarray  # [methods+1, S, 2] held-out sample, top-2 principal axes after each transform
    sample_class: np.ndarray
    artefacts: dict  # method -> {"path", "sha256"} when saved

    kind = "whitening"

    def to_frame(self) -> pd.DataFrame:
        return self.scores

    def figure_scores(self):
        import plotly.express as px

        df = self.scores.melt(id_vars=["set", "method"], value_vars=["isoscore", "isoscore_star", "avg_cosine",
                                                                     "partition", "isotropy_su"],
                              var_name="score", value_name="value")
        return px.bar(df, x="score", y="value", color="method", barmode="group", facet_row="set",
                      title=f"Whitening at {self.site}: fitted on the fitting set, applied to the held-out set")

    def figure_pca(self):
        from plotly.subplots import make_subplots
        import plotly.graph_objects as go

        methods = ("none",) + tuple(self.params.methods)
        fig = make_subplots(rows=1, cols=len(methods), subplot_titles=[f"{m}" for m in methods])
        classes = list(dict.fromkeys(self.sample_class.tolist()))
        for j, _ in enumerate(methods):
            for c in classes:
                sel = self.sample_class == c
                fig.add_trace(go.Scatter(x=self.pca[j, sel, 0], y=self.pca[j, sel, 1], mode="markers", name=str(c),
                                         legendgroup=str(c), showlegend=j == 0, marker={"size": 4, "opacity": 0.6}),
                              row=1, col=j + 1)
        fig.update_layout(title="Held-out tokens on the top-2 principal axes, before and after whitening")
        return fig

    def figures(self) -> dict:
        return {"scores": self.figure_scores(), "pca": self.figure_pca()}


@dataclass(frozen=True)
class WhiteningParams(Params):
    """Parameters of :func:`whitening_effect`."""

    kind: ClassVar[str] = "whitening"
    depth: int | None = field(default=None, metadata={"help": "residual depth (0 = embeddings; None: the last)"})
    methods: tuple[str, ...] = field(default=("zca", "zipfian", "outlier_removal"), metadata={"help": "whitenings"})
    fit_text_set: str = field(default="mixed", metadata={"help": "text set to fit on"})
    apply_text_set: str = field(default="mixed", metadata={"help": "text set to apply to (same set: disjoint texts)"})
    n_texts: int = field(default=24, metadata={"help": "texts in each set"})
    max_tokens: int = field(default=128, metadata={"help": "tokens per text"})
    eps: float = field(default=1e-6, metadata={"help": "ε added to the eigenvalues (× the average variance)"})
    outlier_multiple: float = field(default=5.0, metadata={"help": "outlier: variance > this × the average"})
    n_sample: int = field(default=1000, metadata={"help": "sampled tokens (average cosine, partition, PCA)"})
    n_pairs: int = field(default=10_000, metadata={"help": "random pairs for the average cosine"})
    zeta: float = field(default=0.2, metadata={"help": "IsoScore* shrinkage ζ"})
    c0: str = field(default="scaled_identity", metadata={"help": "IsoScore* target C0"})
    seed: int = field(default=0, metadata={"help": "seed"})
    batch_size: int = field(default=8, metadata={"help": "texts per forward pass"})
    save_dir: str | None = field(default=None, metadata={"help": "save each fitted whitening here (safetensors + sha256)"})

    def __post_init__(self):
        from mechscope.probes.whitening import METHODS

        object.__setattr__(self, "methods", tuple(self.methods))
        for m in self.methods:
            if m not in METHODS:
                raise InputError(f"Unknown whitening {m!r}: choose from {', '.join(METHODS)}.")
        if not self.methods:
            raise InputError("Choose at least one whitening method.")
        check_zeta(self.zeta)
        check_multiple(self.outlier_multiple)
        if self.c0 not in C0_CHOICES:
            raise InputError(f"Unknown C0 {self.c0!r}: choose from {', '.join(C0_CHOICES)}.")
        if not self.eps >= 0:
            raise InputError("eps must be >= 0.")
        for name in ("n_texts", "max_tokens", "n_sample", "n_pairs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (2 if name in ("max_tokens", "n_sample") else 1):
                raise InputError(f"{name} must be an integer >= {2 if name in ('max_tokens', 'n_sample') else 1}, not {v!r}.")


def split_text_sets(fit_set: str, apply_set: str, n: int) -> tuple[list[str], list[str]]:
    """Fitting and held-out texts; from one set, even-numbered texts fit and odd ones are held out."""
    from mechscope.analyses.sinks import load_text_set

    if fit_set != apply_set:
        a = [t for ts in load_text_set(fit_set, n).values() for t in ts]
        b = [t for ts in load_text_set(apply_set, n).values() for t in ts]
        return a, b
    sets = load_text_set(fit_set, None)
    per = [n // len(sets) + (1 if i < n % len(sets) else 0) for i in range(len(sets))]
    a = [t for ts, k in zip(sets.values(), per) for t in ts[0::2][:k]]
    b = [t for ts, k in zip(sets.values(), per) for t in ts[1::2][:k]]
    return a, b


def _score_variants(model, seqs, site, transforms, params, progress=None):
    """One pass over ``seqs``: each transform's output (a [B, T, d] → [B, T, d] function)
    folded into its own cloud at ``site``; returns per-variant states and the sample picks."""
    lengths = [len(s) for s in seqs]
    picks = sample_slots(lengths, params.n_sample, params.seed)
    n_s = min(params.n_sample, sum(lengths))
    st = _SiteState(len(seqs), n_s, torch.float64)

    def reducer(t, where, batch):
        x = torch.stack([f(t.double()) for f in transforms], dim=2)  # [B, T, G, d]
        st.add(x, batch, picks)

    capture.run(model, seqs, reducers={site: reducer}, batch_size=params.batch_size, progress=progress)
    return st, picks, n_s


@analysis(WhiteningParams)
def whitening_effect(model, params: WhiteningParams, progress: Callable[[int, int], None] | None = None) -> WhiteningResult:
    """Fit ZCA, Zipfian and outlier-removal whitening on one text set at one residual depth,
    apply them to another, and score both clouds before and after."""
    from mechscope.probes import whitening as wh

    depth = model.cfg.n_layers if params.depth is None else params.depth
    site = wh.site_for_depth(model, depth)
    fit_texts, apply_texts = split_text_sets(params.fit_text_set, params.apply_text_set, params.n_texts)
    if not fit_texts or not apply_texts:
        raise InputError("The fitting or the held-out set is empty: use more texts.")
    fit_seqs = encode_texts(model, fit_texts, params.max_tokens)
    apply_seqs = encode_texts(model, apply_texts, params.max_tokens)
    steps = 3
    tick = (lambda k: (lambda d, t: progress(k * t + d, steps * t))) if progress else (lambda k: None)

    # 1. fit: plain and Zipf-weighted statistics in one pass
    plain, zipf = CloudStats(torch.float64), CloudStats(torch.float64)
    weights = zipf_weights(fit_seqs, corpus_frequencies(model)) if "zipfian" in params.methods else None

    def fit_reducer(t, where, batch):
        for b, i in enumerate(batch.index):
            x = t[b, : int(batch.lengths[b])]
            plain.add(x)
            if weights is not None:
                zipf.add(x, weights[i])

    capture.run(model, fit_seqs, reducers={site: fit_reducer}, batch_size=params.batch_size, progress=tick(0))
    info = {"fit_text_set": params.fit_text_set, "n_texts": params.n_texts, "max_tokens": params.max_tokens,
            "model": model_id(model)}
    fits = {m: wh.fit_from_stats(m, site, zipf if m == "zipfian" else plain, params.eps, params.outlier_multiple, info)
            for m in params.methods}
    artefacts = {}
    if params.save_dir:
        for m, f in fits.items():
            path = Path(params.save_dir) / f"whitening-{m}-depth{depth}.safetensors"
            artefacts[m] = {"path": str(path), "sha256": wh.save(f, path)}

    # 2. score before/after on both sets
    methods = ("none",) + tuple(params.methods)
    transforms = [lambda x: x] + [(lambda x, f=fits[m]: (x - f.mean.to(x.device)) @ f.matrix.to(x.device))
                                  for m in params.methods]
    rows, pca, classes = [], None, None
    for k, (name, seqs) in enumerate((("fit", fit_seqs), ("held-out", apply_seqs)), start=1):
        st, picks, n_s = _score_variants(model, seqs, site, transforms, params, tick(k))
        cov_all, mean_all = st.stats.cov(), st.stats.mean()
        second_all = st.stats.second_moment()
        samples = st.sample  # [S, G, d] in slot order
        proj = []
        for g, m in enumerate(methods):
            keep = torch.ones(cov_all.shape[-1], dtype=torch.bool)
            if m == "outlier_removal" and fits[m].dims:
                keep[list(fits[m].dims)] = False
            idx = torch.nonzero(keep).reshape(-1).to(cov_all.device)
            cov = cov_all[g][idx][:, idx]
            sample = samples[:, g].double().to(cov.device)[:, idx]
            row, _, vecs = _full_cloud(cov, mean_all[g][idx], second_all[g][idx][:, idx], sample,
                                       st.pooled_selfsim(g), params)
            eye = torch.eye(cov.shape[0], dtype=torch.float64, device=cov.device)
            row["cov_distance_to_identity"] = float(torch.linalg.matrix_norm(cov - eye) / math.sqrt(cov.shape[0]))
            rows.append({"set": name, "method": m, "site": site, "n_points": st.stats.n, **row})
            proj.append(((sample - mean_all[g][idx]) @ vecs[:, :2]).cpu().numpy())
        if name == "held-out":
            pca = np.stack(proj).astype(np.float32)
            classes = _sample_labels(model, seqs, picks, n_s)[1]
    return WhiteningResult(model_id=model_id(model), params=params, scores=pd.DataFrame(rows), site=site,
                           removed_dims=fits["outlier_removal"].dims if "outlier_removal" in fits else (),
                           pca=pca, sample_class=classes, artefacts=artefacts)


def _sample_labels(model, seqs, picks, n_s):
    from mechscope.analyses.sinks import token_class

    tok = np.empty(n_s, dtype=object)
    cls = np.empty(n_s, dtype=object)
    for i, (pos, slots) in picks.items():
        ids = [seqs[i][p] for p in pos.tolist()]
        strs = str_tokens(model, ids) if model.tokenizer is not None else [str(t) for t in ids]
        for p, sl, s in zip(pos.tolist(), slots.tolist(), strs):
            tok[sl] = s
            cls[sl] = "first token" if p == 0 else token_class(s)
    return tok, cls


# ---------------------------------------------------------------------------------------
# Contrastive search beside greedy and sampling (docs/isotropy.md#contrastive-search)


def rep_n(tokens: Sequence[int], n: int) -> float:
    """Su et al.'s rep-n = 100 × (1 − |unique n-grams| / |n-grams|) of one generation."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return float("nan")
    return 100.0 * (1 - len(set(grams)) / len(grams))


def diversity(tokens: Sequence[int]) -> float:
    """Π_{n=2..4} (1 − rep-n / 100)."""
    return float(np.prod([1 - rep_n(tokens, n) / 100 for n in (2, 3, 4)]))


def final_states(model, prompt_ids: Sequence[int], new_ids: Sequence[int]) -> torch.Tensor:
    """Last-layer states after the final norm for the generated tokens [n, d] (teacher-forced)."""
    site = hooknames.name("resid_post", model.cfg.n_layers - 1)
    out = capture.run(model, [list(prompt_ids) + list(new_ids)], capture=[site]).activations[site][0]
    from mechscope.probes.readout import final_norm

    with torch.no_grad():
        return final_norm(model, out.to(model.cfg.device))[len(prompt_ids):].double().cpu()


@dataclass(frozen=True)
class DecodingIsotropyResult(Result):
    """Per strategy and prompt: rep-2/3/4, diversity, isotropy of the generation's states."""

    table: pd.DataFrame
    texts: tuple  # (strategy, prompt index, continuation) per row

    kind = "decoding_isotropy"

    def summary(self) -> pd.DataFrame:
        cols = ["rep_2", "rep_3", "rep_4", "diversity", "isotropy", "ms_per_token"]
        return self.table.groupby("strategy", sort=False)[cols].mean().reset_index()

    def to_frame(self) -> pd.DataFrame:
        return self.table.drop(columns=["ms_per_token"])  # wall-clock time: not part of what re-runs

    def figures(self) -> dict:
        import plotly.express as px

        df = self.summary().melt(id_vars=["strategy"], value_vars=["rep_2", "rep_3", "rep_4"], var_name="metric")
        f1 = px.bar(df, x="metric", y="value", color="strategy", barmode="group", title="Repetition rate (%)")
        df2 = self.summary().melt(id_vars=["strategy"], value_vars=["diversity", "isotropy"], var_name="metric")
        f2 = px.bar(df2, x="metric", y="value", color="strategy", barmode="group",
                    title="Diversity and isotropy (1 − mean cosine of the generated tokens' final-layer states)")
        return {"repetition": f1, "diversity_isotropy": f2}


@dataclass(frozen=True)
class DecodingIsotropyParams(Params):
    """Parameters of :func:`decoding_isotropy`. Su et al. use 32-token prefixes; defaults are
    kept small for a CPU."""

    kind: ClassVar[str] = "decoding_isotropy"
    prompts: tuple[str, ...] | None = field(default=None, metadata={"help": "prompts (None: prose prefixes)"})
    n_prompts: int = field(default=4, metadata={"help": "prose prefixes to use"})
    prompt_tokens: int = field(default=32, metadata={"help": "tokens per prefix"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens to generate"})
    alpha: float = field(default=0.6, metadata={"help": "contrastive search α"})
    k: int = field(default=4, metadata={"help": "contrastive search k"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling p"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})

    def __post_init__(self):
        from mechscope.probes.contrastive import check_alpha_k

        check_alpha_k(self.alpha, self.k)
        if self.prompts is not None:
            object.__setattr__(self, "prompts", tuple(self.prompts))
        for name in ("n_prompts", "prompt_tokens", "max_new_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (4 if name == "max_new_tokens" else 1):
                raise InputError(f"{name} must be an integer >= {4 if name == 'max_new_tokens' else 1}, not {v!r}.")


@analysis(DecodingIsotropyParams)
def decoding_isotropy(model, params: DecodingIsotropyParams, progress: Callable[[int, int], None] | None = None):
    """Greedy, nucleus sampling and contrastive search on the same prompts: repetition,
    diversity and the isotropy of what each generates."""
    import time

    from mechscope.probes import datasets
    from mechscope.probes.contrastive import Contrastive
    from mechscope.probes.decoding import Greedy, Sample, generate

    if params.prompts is not None:
        prompts = [text_ids(model, p) for p in params.prompts]
    else:
        prompts = [text_ids(model, t)[: params.prompt_tokens] for t in datasets.load_texts("prose")[: params.n_prompts]]
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InputError("Every prompt needs at least one token.")
    strategies = {"greedy": Greedy(), f"sampling (top-p {params.top_p:g})": Sample(top_p=params.top_p, seed=params.seed),
                  f"contrastive (α {params.alpha:g}, k {params.k})": Contrastive(params.alpha, params.k)}
    rows, texts = [], []
    total, done = len(prompts) * len(strategies), 0
    for name, strat in strategies.items():
        for i, p in enumerate(prompts):
            t0 = time.perf_counter()
            gen = generate(model, p, params.max_new_tokens, strat, stop_at_eos=False)
            ms = 1000 * (time.perf_counter() - t0) / max(len(gen.new_tokens), 1)
            new = list(gen.new_tokens)
            hs = final_states(model, p, new)
            rows.append({"strategy": name, "prompt": i, "n_tokens": len(new), "rep_2": rep_n(new, 2),
                         "rep_3": rep_n(new, 3), "rep_4": rep_n(new, 4), "diversity": diversity(new),
                         "isotropy": 1 - mean_pair_cosine(hs) if len(new) >= 2 else float("nan"), "ms_per_token": ms})
            texts.append((name, i, gen.text))
            done += 1
            if progress is not None:
                progress(done, total)
    return DecodingIsotropyResult(model_id=model_id(model), params=params, table=pd.DataFrame(rows), texts=tuple(texts))
