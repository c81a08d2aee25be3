"""LLM-Microscope layer metrics over a text set (Razzhigaev et al. 2025, arXiv 2502.15007;
reference code AIRI-Institute/LLM-Microscope; REFERENCES §10).

States: the embeddings (``blocks.0.hook_resid_pre``) and the residual stream after every block
(``blocks.l.hook_resid_post``, *before* the final norm — HF's last hidden state has the
final norm applied; here every state is pre-norm), over every real token of the text set.

* :func:`linearity_score` — X = h_l, Y = h_{l+1}; centre both, scale each to unit Frobenius
  norm; A = least squares; score = 1 − ‖XA − Y‖²_F ("Your Transformer is Secretly Linear").
* :func:`token_nonlinearity` — the paper's per-token nonlinearity E_i^l = ‖A x̃_i − ỹ_i‖₂ of
  token i under the same layer-wide A on the same centred, normalised matrices; so
  Σ_i (E_i^l)² = 1 − linearity_l. High values mark the tokens whose update is least linear
  (the paper finds punctuation and stop words).
* :func:`anisotropy` — largest eigenvalue / sum of eigenvalues of the centred covariance.
* :func:`twonn_dimension` — TwoNN intrinsic dimension (Facco et al. 2017): μ_i = r2/r1, the
  ratio of each point's second to first nearest-neighbour distance. ``method="mle"``
  (default): d = N / Σ log μ_i. ``method="fit"``: Facco's linear fit through the origin of
  −log(1 − F_emp(μ)) against log μ, discarding the largest 10% of μ. (The LLM-Microscope
  notebook fits on the smallest fifth of μ instead; both estimate the same d.) Duplicate
  points are merged first (a duplicate has r1 = 0, and its neighbours r1 = r2).
"""

from __future__ import annotations

import string
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import pandas as pd
import torch

from probes.errors import InputError
from probes.results import Result


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


def twonn_dimension(X, method: Literal["mle", "fit"] = "mle", discard: float = 0.1) -> float:
    """TwoNN intrinsic dimension of the points X [n, d] (see the module docstring)."""
    from sklearn.neighbors import NearestNeighbors

    X = np.asarray(X.detach().cpu().double() if isinstance(X, torch.Tensor) else X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 3:
        raise InputError("TwoNN needs at least three points in a [n, d] array.")
    X = np.unique(X, axis=0)  # duplicates would give r1 = 0 (and their neighbours r1 = r2)
    if X.shape[0] < 3:
        raise InputError("TwoNN: too few distinct points.")
    dist, _ = NearestNeighbors(n_neighbors=3).fit(X).kneighbors(X)
    r1, r2 = dist[:, 1], dist[:, 2]
    mu = r2 / r1
    if len(mu) < 3:
        raise InputError("TwoNN: too few distinct points.")
    logmu = np.log(mu)
    if method == "mle":
        s = logmu.sum()
        return float(len(mu) / s) if s > 0 else float("inf")
    if method != "fit":
        raise InputError(f"TwoNN method must be 'mle' or 'fit', not {method!r}.")
    order = np.sort(logmu)
    n = len(order)
    F = np.arange(1, n + 1) / n
    keep = int(np.floor(n * (1 - discard)))
    x, y = order[:keep], -np.log(1 - F[:keep])
    return float((x * y).sum() / (x * x).sum())


_STOP = set("""a an the and or but if of to in on at by for with from as is are was were be been it its
this that these those he she they we you i his her their our your my me him them us not no so than then
there here which who whom what when where why how do does did have has had will would can could should
may might must shall into onto over under about""".split())


def token_class(tok: str) -> str:
    """'punctuation', 'stop word', 'number', 'space' or 'other' (simple surface rules)."""
    s = tok.strip()
    if not s:
        return "space"
    if all(c in string.punctuation for c in s):
        return "punctuation"
    if s.lower() in _STOP:
        return "stop word"
    if s.replace(".", "").isdigit():
        return "number"
    return "other"


@dataclass(frozen=True)
class MicroscopeResult(Result):
    """Per-layer metrics (index 0 = embeddings, l+1 = after block l) and per-token
    nonlinearity (column l = the transformation by block l)."""

    linearity: np.ndarray  # [n_layers]      state l → l+1
    anisotropy: np.ndarray  # [n_layers + 1]
    intrinsic_dim: np.ndarray  # [n_layers + 1]
    nonlinearity: torch.Tensor  # [n_tokens, n_layers]
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
        n = len(self.linearity)
        return pd.DataFrame({
            "state": ["embed"] + [f"after block {i}" for i in range(n)],
            "linearity_to_next": list(self.linearity) + [np.nan],
            "anisotropy": self.anisotropy,
            "intrinsic_dim": self.intrinsic_dim,
        })

    def figures(self) -> dict:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        n = len(self.linearity)
        fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                            subplot_titles=("Linearity score of block l (state l → l+1)",
                                            "Anisotropy of the state after block l (−1 = embeddings)",
                                            f"Intrinsic dimension (TwoNN, {self.params['id_method']})"))
        fig.add_trace(go.Scatter(x=list(range(n)), y=self.linearity, mode="lines+markers", name="linearity"), 1, 1)
        xs = list(range(-1, n))
        fig.add_trace(go.Scatter(x=xs, y=self.anisotropy, mode="lines+markers", name="anisotropy"), 2, 1)
        fig.add_trace(go.Scatter(x=xs, y=self.intrinsic_dim, mode="lines+markers", name="TwoNN ID"), 3, 1)
        fig.update_layout(height=750, showlegend=False, title=f"LLM-Microscope metrics over {len(self.tokens)} tokens")
        fig.update_xaxes(title_text="layer", row=3, col=1)
        c = self.by_class()
        bar = go.Figure(go.Bar(x=c["token_class"], y=c["mean"], text=c["count"], texttemplate="n=%{text}"))
        bar.update_layout(title="Mean per-token nonlinearity by token class (LLM-Microscope)",
                          yaxis_title="mean ‖A x̃ − ỹ‖ over layers")
        t = self.by_token().head(30)
        top = go.Figure(go.Bar(x=[repr(s) for s in t["token"]], y=t["nonlinearity"]))
        top.update_layout(title="Most nonlinear tokens (≥ 3 occurrences)", yaxis_title="mean nonlinearity")
        return {"layer_metrics": fig, "nonlinearity_by_class": bar, "most_nonlinear_tokens": top}


def microscope(
    model,
    texts: str | Sequence[str] = "mixed",
    max_tokens: int = 4096,
    max_tokens_per_text: int = 256,
    id_points: int = 2000,
    id_method: Literal["mle", "fit"] = "mle",
    seed: int = 0,
    batch_size: int = 8,
    progress=False,
) -> MicroscopeResult:
    """Linearity, anisotropy, TwoNN dimension per layer and per-token nonlinearity over a text
    set, truncated to ``max_tokens`` tokens in all (texts cut to ``max_tokens_per_text``).
    TwoNN runs on a random subset of ``id_points`` tokens per layer (seeded)."""
    from analyses.neurons import _encode_texts, resolve_texts
    from probes.capture import run
    from probes.tokens import str_tokens

    texts_list = resolve_texts(texts)
    seqs, total = [], 0
    for s in _encode_texts(model, texts_list, max_tokens_per_text):
        if total >= max_tokens:
            break
        s = s[: max_tokens - total]
        seqs.append(s)
        total += len(s)
    d = model.cfg.d_model
    if total <= d:
        raise InputError(f"The text set gives {total} tokens; the linear fit needs more than d_model = {d}.")
    L = model.cfg.n_layers
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(L)]
    out = run(model, seqs, capture=names, batch_size=batch_size, progress=progress, desc="microscope")
    states = [torch.cat(out.activations[n]).float() for n in names]  # each [n_tokens, d]
    del out
    residuals = [_fit(states[i], states[i + 1])[1] for i in range(L)]
    lin = np.array([float(1.0 - R.pow(2).sum()) for R in residuals])
    E = torch.stack([R.norm(dim=1).float() for R in residuals], dim=1)
    del residuals
    ani = np.array([anisotropy(s) for s in states])
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(total, generator=g)[: min(id_points, total)]
    ids = np.array([twonn_dimension(s[pick], method=id_method) for s in states])
    all_ids = torch.cat(seqs)
    toks = str_tokens(model, all_ids)
    frame = pd.DataFrame({
        "text": np.concatenate([np.full(len(s), i) for i, s in enumerate(seqs)]),
        "pos": np.concatenate([np.arange(len(s)) for s in seqs]),
        "token": toks, "token_id": all_ids.numpy(),
        "token_class": [token_class(t) for t in toks],
        "nonlinearity": E.mean(dim=1).numpy(),
    })
    return MicroscopeResult(
        model_id=getattr(getattr(model, "mechscope_spec", None), "name", "custom"),
        params={"texts": texts if isinstance(texts, str) else None, "n_texts": len(seqs), "max_tokens": max_tokens,
                "max_tokens_per_text": max_tokens_per_text, "id_points": id_points, "id_method": id_method,
                "seed": seed, "n_tokens": total},
        linearity=lin, anisotropy=ani, intrinsic_dim=ids, nonlinearity=E, tokens=frame,
    )
