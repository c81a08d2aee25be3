"""LLM-Microscope layer metrics over a text set (Razzhigaev et al. 2025, arXiv 2502.15007;
reference code AIRI-Institute/LLM-Microscope; docs/logit_lens.md#llm-microscope-metrics).

States, as the reference's HF ``hidden_states``: the embeddings (``blocks.0.hook_resid_pre``),
the residual stream after blocks 0 … L−2 (``hook_resid_post``) and the final normed state
ln_final(h after block L−1); plus one extra, labelled row: after block L−1 before the norm.

* :func:`linearity_score` — X = h_l, Y = h_{l+1}; centre both, scale each to unit Frobenius
  norm; A = least squares; score = 1 − ‖XA − Y‖²_F ("Your Transformer is Secretly Linear").
* :func:`token_nonlinearity` — the paper's per-token nonlinearity E_i^l = ‖A x̃_i − ỹ_i‖₂ of
  token i under the same layer-wide A on the same centred, normalised matrices; so
  Σ_i (E_i^l)² = 1 − linearity_l. High values mark the tokens whose update is least linear
  (the paper finds punctuation and stop words).
* :func:`anisotropy` — largest eigenvalue / sum of eigenvalues of the centred covariance.
* :func:`twonn_dimension` — TwoNN intrinsic dimension (Facco et al. 2017): μ_i = r2/r1, the
  ratio of each point's second to first nearest-neighbour distance. ``method="reference"``
  (default, LLM-Microscope's estimator): centre, divide by the mean norm, set points with
  μ ≤ 1 aside (still counted in the empirical CDF), fit −log(1 − F) = d·log μ through the
  origin on the smallest 20% of μ; over the first ``id_points`` (4,096) tokens.
  ``method="mle"``: d = N / Σ log μ_i (duplicates merged). ``method="fit"``: Facco's fit
  discarding the largest 10% of μ. On real LM states the three differ a lot (the
  reference's fit on the smallest μ reads the local, small-scale dimension).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
import torch

from mechscope.probes.errors import InputError
from mechscope.probes.lexical import lexical_class
from mechscope.probes.models import model_id
from mechscope.probes.results import Result, analysis
from mechscope.probes.texts import TextInputs, encode_texts


@contextmanager
def _lapack_threads(n: int = 1):
    """Run small dense LAPACK calls (d ≤ a few thousand) on ``n`` threads. On a loaded 2-core
    machine multi-threaded eigvalsh/lstsq on 576×576 problems was measured 10–300× slower
    than single-threaded (threads spin-waiting); the setting is process-wide and restored."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _prep(M: torch.Tensor) -> torch.Tensor:
    M = M.double()
    M = M - M.mean(dim=0, keepdim=True)
    norm = torch.linalg.matrix_norm(M)
    return M / norm if norm > 0 else M


def _fit(X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred, normalised X̃, Ỹ and the residual X̃A − Ỹ of the least-squares A."""
    if X.shape != Y.shape or X.ndim != 2:
        raise InputError("X and Y must be matrices of the same shape [tokens, d].")
    if X.shape[0] < 2:
        raise InputError("Linearity needs at least two tokens.")
    Xn, Yn = _prep(X), _prep(Y)
    with _lapack_threads():
        A = torch.linalg.lstsq(Xn, Yn, driver="gelsy").solution  # pivoted QR: rank-deficient X is fine
    return Xn, Xn @ A - Yn


def linearity_score(X: torch.Tensor, Y: torch.Tensor) -> float:
    """1 − ‖X̃A − Ỹ‖²_F (see the module docstring). Needs more tokens than dimensions to
    mean anything: with n ≤ d any Y is fitted exactly."""
    _, R = _fit(X, Y)
    return float(1.0 - R.pow(2).sum())


def token_nonlinearity(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """[n] per-token nonlinearity ‖A x̃_i − ỹ_i‖₂ (arXiv 2502.15007)."""
    _, R = _fit(X, Y)
    return R.norm(dim=1).float()


def anisotropy(X: torch.Tensor) -> float:
    """Largest eigenvalue / trace of the centred covariance of X [n, d]."""
    Xc = X.double() - X.double().mean(dim=0, keepdim=True)
    if Xc.shape[0] < 2:
        raise InputError("Anisotropy needs at least two points.")
    G = Xc.T @ Xc if Xc.shape[1] <= Xc.shape[0] else Xc @ Xc.T
    with _lapack_threads():
        ev = torch.linalg.eigvalsh(G)
    tr = ev.sum()
    return float(ev[-1] / tr) if tr > 0 else float("nan")


TWONN_REDUCTION = 5  # LLM-Microscope fits on the smallest 1/5 of the μ ratios
_DUP_EPS = 1e-8  # r1 below this (after scaling by the mean norm) marks a duplicate point


def _two_nn(X: torch.Tensor, chunk: int = 1024, cand: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """r1, r2 (first and second nearest-neighbour distances, self excluded) of each row of X
    (float64). Candidates come from the Gram-matrix form of the distances; their distances are
    then recomputed exactly as ‖x_i − x_j‖ (the Gram form leaves ~1e-8 of rounding on
    duplicates, which would hide them)."""
    n = X.shape[0]
    sq = (X * X).sum(1)
    r1, r2 = torch.empty(n, dtype=X.dtype), torch.empty(n, dtype=X.dtype)
    c = min(cand, n - 1)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        d2 = sq[a:b, None] + sq[None, :] - 2 * X[a:b] @ X.T
        d2[torch.arange(b - a), torch.arange(a, b)] = float("inf")
        idx = torch.topk(d2, c, dim=1, largest=False).indices  # [m, c]
        exact = (X[idx] - X[a:b, None, :]).norm(dim=2)  # [m, c]
        exact = torch.sort(exact, dim=1).values
        r1[a:b], r2[a:b] = exact[:, 0], exact[:, 1]
    return r1, r2


def twonn_mu(X) -> np.ndarray:
    """μ_i = r2/r1 for every point of X [n, d] after centring and dividing by the mean norm
    (float64); μ = −1 marks a duplicate point (r1 below 1e-8)."""
    X = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X.detach().cpu()).double()
    if X.ndim != 2 or X.shape[0] < 3:
        raise InputError("TwoNN needs at least three points in a [n, d] array.")
    X = X - X.mean(dim=0, keepdim=True)
    scale = X.norm(dim=1).mean()
    if scale > 0:
        X = X / scale
    with _lapack_threads():
        r1, r2 = _two_nn(X)
    bad = r1 < _DUP_EPS
    mu = torch.where(bad, torch.full_like(r1, -1.0), r2 / torch.where(bad, torch.ones_like(r1), r1))
    return mu.numpy()


def twonn_dimension(X, method: Literal["reference", "mle", "fit"] = "reference", discard: float = 0.1) -> float:
    """TwoNN intrinsic dimension of the points X [n, d] (see the module docstring).

    ``"reference"`` (LLM-Microscope's estimator, the default): states centred and divided by
    their mean norm; points with μ ≤ 1 (duplicates, ties) set aside but still counted in the
    empirical CDF F_i = (m + i)/N; fit −log(1 − F) = d·log μ through the origin on the
    smallest ⌊n/5⌋ of the remaining n ratios. ``"mle"``: d = N / Σ log μ_i after merging
    duplicate points (Facco et al.'s maximum-likelihood form). ``"fit"``: Facco's fit through
    the origin discarding the largest ``discard`` fraction of μ (duplicates merged).
    """
    if method == "reference":
        mu = np.sort(twonn_mu(X))
        N = len(mu)
        m = int((mu <= 1 + _DUP_EPS).sum())
        mu = mu[m:]
        n = len(mu)
        k = min(n // TWONN_REDUCTION, n - 1)
        if k < 1:  # (almost) all points are duplicates: no fit (the reference gives 0/0 = nan)
            return float("nan")
        F = (m + np.arange(1, n + 1)) / N
        x, y = np.log(mu[:k]), -np.log(1 - F[:k])
        return float((x * y).sum() / (x * x).sum())
    if method not in ("mle", "fit"):
        raise InputError(f"TwoNN method must be 'reference', 'mle' or 'fit', not {method!r}.")
    X = np.asarray(X.detach().cpu().double() if isinstance(X, torch.Tensor) else X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 3:
        raise InputError("TwoNN needs at least three points in a [n, d] array.")
    X = np.unique(X, axis=0)  # duplicates would give r1 = 0 (and their neighbours r1 = r2)
    if X.shape[0] < 3:
        raise InputError("TwoNN: too few distinct points.")
    mu = twonn_mu(X)
    logmu = np.log(np.where(mu > 0, mu, 1.0))
    if method == "mle":
        s = logmu.sum()
        return float(len(mu) / s) if s > 0 else float("inf")
    order = np.sort(logmu)
    n = len(order)
    F = np.arange(1, n + 1) / n
    keep = int(np.floor(n * (1 - discard)))
    x, y = order[:keep], -np.log(1 - F[:keep])
    return float((x * y).sum() / (x * x).sum())




@dataclass(frozen=True)
class MicroscopeParams(TextInputs):
    kind: ClassVar[str] = "microscope"
    LEGACY_FIELDS: ClassVar[dict] = {"max_tokens": "total_tokens", "max_tokens_per_text": "max_tokens"}
    total_tokens: int = field(default=4096, metadata={"help": "tokens used in all (the reference uses 4,096)"})
    id_points: int = field(default=4096, metadata={"help": "TwoNN on the first this-many tokens"})
    id_method: Literal["reference", "mle", "fit"] = field(default="reference", metadata={
        "help": "TwoNN estimator: reference (LLM-Microscope: smallest 20%% of mu), mle or fit"})
    batch_size: int = field(default=8, metadata={"help": "texts per forward pass"})

    def __post_init__(self):
        super().__post_init__()
        if self.id_method not in ("reference", "mle", "fit"):
            raise InputError(f"id_method must be 'reference', 'mle' or 'fit', not {self.id_method!r}.")
        for name in ("total_tokens", "id_points", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(f"{name} must be a positive integer, not {v!r}.")


@dataclass(frozen=True)
class MicroscopeResult(Result):
    """Per-state metrics and per-token nonlinearity.

    States (rows of :meth:`to_frame`), as the reference's HF ``hidden_states``: ``embed``,
    ``after block 0`` … ``after block L−2``, ``final norm`` (= ln_final(after block L−1));
    plus one extra row not in the reference, ``after block L−1 (pre-norm)``, placed before
    ``final norm``. Linearity and nonlinearity are over consecutive *reference* states
    (L transitions; the last is after block L−2 → final norm, as in the reference)."""

    states: list  # state labels, len S = L + 2
    in_reference: list  # bool per state
    linearity: np.ndarray  # [L] reference transition j: ref state j → j+1
    anisotropy: np.ndarray  # [S]
    intrinsic_dim: np.ndarray  # [S] the chosen estimator
    intrinsic_dim_mle: np.ndarray  # [S] always the MLE too, for comparison
    nonlinearity: torch.Tensor  # [n_tokens, L]
    tokens: pd.DataFrame  # one row per token: text, pos, token, token_id, class, mean nonlinearity

    kind = "microscope"

    def by_token(self, min_count: int = 3) -> pd.DataFrame:
        """Token strings ranked by mean nonlinearity (averaged over layers and occurrences)."""
        g = self.tokens.groupby("token").agg(count=("nonlinearity", "size"), nonlinearity=("nonlinearity", "mean"),
                                            token_class=("token_class", "first"))
        return g[g["count"] >= min_count].sort_values("nonlinearity", ascending=False).reset_index()

    def by_class(self) -> pd.DataFrame:
        return (self.tokens.groupby("token_class")["nonlinearity"].agg(["count", "mean", "median"])
                .sort_values("mean", ascending=False).reset_index())

    def to_frame(self) -> pd.DataFrame:
        ref_rows = [i for i, r in enumerate(self.in_reference) if r]
        lin = np.full(len(self.states), np.nan)
        for j, i in enumerate(ref_rows[:-1]):
            lin[i] = self.linearity[j]
        return pd.DataFrame({
            "state": self.states,
            "in_reference": self.in_reference,
            "linearity_to_next": lin,
            "anisotropy": self.anisotropy,
            "intrinsic_dim": self.intrinsic_dim,
            "intrinsic_dim_mle": self.intrinsic_dim_mle,
        })

    def figures(self) -> dict:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        n = len(self.linearity)
        fig = make_subplots(rows=3, cols=1, vertical_spacing=0.08,
                            subplot_titles=("Linearity of reference transition j (state j → j+1)",
                                            "Anisotropy per state",
                                            f"Intrinsic dimension (TwoNN, {self.params.id_method}; dotted: MLE)"))
        fig.add_trace(go.Scatter(x=list(range(n)), y=self.linearity, mode="lines+markers", name="linearity"), 1, 1)
        xs = list(self.states)
        fig.add_trace(go.Scatter(x=xs, y=self.anisotropy, mode="lines+markers", name="anisotropy"), 2, 1)
        fig.add_trace(go.Scatter(x=xs, y=self.intrinsic_dim, mode="lines+markers", name="TwoNN ID"), 3, 1)
        fig.add_trace(go.Scatter(x=xs, y=self.intrinsic_dim_mle, mode="lines", line={"dash": "dot"},
                                 name="TwoNN MLE"), 3, 1)
        fig.update_layout(height=850, showlegend=False,
                          title=f"LLM-Microscope metrics over {len(self.tokens)} tokens ({self.model_id})")
        c = self.by_class()
        bar = go.Figure(go.Bar(x=c["token_class"], y=c["mean"], text=c["count"], texttemplate="n=%{text}"))
        bar.update_layout(title="Mean per-token nonlinearity by token class (LLM-Microscope)",
                          yaxis_title="mean ‖A x̃ − ỹ‖ over layers")
        t = self.by_token().head(30)
        top = go.Figure(go.Bar(x=[repr(s) for s in t["token"]], y=t["nonlinearity"]))
        top.update_layout(title="Most nonlinear tokens (≥ 3 occurrences)", yaxis_title="mean nonlinearity")
        return {"layer_metrics": fig, "nonlinearity_by_class": bar, "most_nonlinear_tokens": top}


@analysis(MicroscopeParams)
def microscope(model, params: MicroscopeParams, *, progress=False) -> MicroscopeResult:
    """Linearity, anisotropy, TwoNN dimension per state and per-token nonlinearity over a
    text set, truncated to ``total_tokens`` tokens in all (texts cut to ``max_tokens``).
    TwoNN runs on the first ``id_points`` tokens (the reference uses the first 4,096)."""
    from mechscope.probes import hooknames
    from mechscope.probes.capture import run
    from mechscope.probes.readout import final_norm
    from mechscope.probes.tokens import str_tokens

    seqs, total = [], 0
    for s in encode_texts(model, params.selected(), params.max_tokens):
        if total >= params.total_tokens:
            break
        s = s[: params.total_tokens - total]
        seqs.append(s)
        total += len(s)
    d = model.cfg.d_model
    if total <= d:
        raise InputError(f"The text set gives {total} tokens; the linear fit needs more than d_model = {d}.")
    L = model.cfg.n_layers
    names = [hooknames.name("resid_pre", 0)] + [hooknames.name("resid_post", i) for i in range(L)]
    out = run(model, seqs, capture=names, batch_size=params.batch_size, progress=progress, desc="microscope")
    states = [torch.cat(out.activations[n]).float() for n in names]  # each [n_tokens, d]
    del out
    with torch.no_grad():
        states.append(final_norm(model, states[-1]).float())
    labels = ["embed"] + [f"after block {i}" for i in range(L - 1)] + [f"after block {L - 1} (pre-norm)", "final norm"]
    in_ref = [True] * L + [False, True]
    ref = [s for s, r in zip(states, in_ref) if r]
    residuals = [_fit(ref[i], ref[i + 1])[1] for i in range(L)]
    lin = np.array([float(1.0 - R.pow(2).sum()) for R in residuals])
    E = torch.stack([R.norm(dim=1).float() for R in residuals], dim=1)
    del residuals
    ani = np.array([anisotropy(s) for s in states])
    k = min(params.id_points, total)
    ids = np.array([twonn_dimension(s[:k], method=params.id_method) for s in states])
    ids_mle = ids if params.id_method == "mle" else np.array([twonn_dimension(s[:k], method="mle") for s in states])
    all_ids = torch.cat(seqs)
    toks = str_tokens(model, all_ids)
    frame = pd.DataFrame({
        "text": np.concatenate([np.full(len(s), i) for i, s in enumerate(seqs)]),
        "pos": np.concatenate([np.arange(len(s)) for s in seqs]),
        "token": toks, "token_id": all_ids.numpy(),
        "token_class": [lexical_class(t) for t in toks],
        "nonlinearity": E.mean(dim=1).numpy(),
    })
    return MicroscopeResult(
        model_id=model_id(model), params=params, states=labels, in_reference=in_ref,
        linearity=lin, anisotropy=ani, intrinsic_dim=ids, intrinsic_dim_mle=ids_mle, nonlinearity=E, tokens=frame,
    )
