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
* :func:`twonn_dimension` — TwoNN intrinsic dimension (Facco et al. 2017) from μ_i = r2/r1,
  the ratio of each point's second to first nearest-neighbour distance.
  ``method="reference"`` (default) is LLM-Microscope's estimator: states centred and divided
  by their mean norm; points with μ ≤ 1 (duplicates, ties) are set aside but still count in
  the empirical CDF F_i = (rank among all N points)/N; d is the slope through the origin of
  −log(1 − F) against log μ over only the smallest fifth of the remaining μ (its
  ``reduction_factor`` 5). ``method="mle"``: d = n / Σ log μ_i over distinct points.
  ``method="fit"``: Facco's fit through the origin discarding the largest 10% of μ. The three
  give different numbers on the same states; the table says which one it used.
* :func:`contextualisation` — the paper's contextualisation score of a layer: how much of a
  token's state is explained by the *previous* tokens' states, measured as the linearity
  score (same centring, normalisation and least squares) between each token's state and the
  mean of the states before it in its text.

Rows follow the reference: the embedding output, the state after every block, and the
final *normed* state (what HF returns as the last hidden state). The pre-norm state after
the last block is kept as an extra, labelled row.
"""

from __future__ import annotations

import string
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Sequence

import numpy as np
import pandas as pd
import torch

from probes import hooknames
from probes.errors import InputError
from probes.models import model_id
from probes.readout import final_norm
from probes.results import Params, Result, analysis


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


TWONN_METHODS = ("reference", "mle", "fit")


def twonn_ratios(X) -> np.ndarray:
    """μ = r2/r1 of every point of X [n, d] (float64; r1 = 0 gives μ = 0: a duplicate)."""
    from sklearn.neighbors import NearestNeighbors

    X = np.asarray(X.detach().cpu().double() if isinstance(X, torch.Tensor) else X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 3:
        raise InputError("TwoNN needs at least three points in a [n, d] array.")
    if not np.isfinite(X).all():
        raise InputError("TwoNN: the states contain NaN or infinite values.")
    dist, _ = NearestNeighbors(n_neighbors=3).fit(X).kneighbors(X)
    # kneighbors returns the point itself first unless a duplicate ties with it: either way
    # column 0 is at distance 0, columns 1 and 2 are the two nearest others
    r1, r2 = dist[:, 1], dist[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r1 > 1e-8, r2 / np.where(r1 > 1e-8, r1, 1.0), 0.0)


def twonn_from_ratios(mu, method: str = "reference", reduction_factor: int = 5, discard: float = 0.1) -> float:
    """The TwoNN estimate from the ratios μ (see the module docstring for the methods)."""
    mu = np.sort(np.asarray(mu, dtype=np.float64))
    if method == "reference":
        eps = 1e-8
        set_aside = int((mu <= 1 + eps).sum())
        kept = mu[set_aside:]
        n, total = len(kept), len(mu)
        use = min(n // reduction_factor, n - 1)
        if use < 1:
            raise InputError("TwoNN: too few points with distinct neighbours for the reference fit.")
        F = (np.arange(1, n + 1) + set_aside) / total
        x, y = np.log(kept[:use]), -np.log(1 - F[:use])
        return float((x * y).sum() / (x * x).sum())
    kept = mu[mu > 1]
    if len(kept) < 3:
        raise InputError("TwoNN: too few distinct points.")
    logmu = np.log(kept)
    if method == "mle":
        return float(len(kept) / logmu.sum())
    if method == "fit":
        n = len(logmu)
        F = np.arange(1, n + 1) / n
        keep = int(np.floor(n * (1 - discard)))
        x, y = logmu[:keep], -np.log(1 - F[:keep])
        return float((x * y).sum() / (x * x).sum())
    raise InputError(f"TwoNN method must be one of {', '.join(TWONN_METHODS)}, not {method!r}.")


def twonn_dimension(X, method: str = "reference", reduction_factor: int = 5, discard: float = 0.1) -> float:
    """TwoNN intrinsic dimension of the points X [n, d] (see the module docstring).

    ``reference`` centres X and divides by the mean norm first (as LLM-Microscope does: the
    ratios do not change, the 1e-8 duplicate threshold then applies on a fixed scale);
    ``mle`` and ``fit`` merge duplicate points (r1 = 0) and set ties (μ = 1) aside.
    """
    if method not in TWONN_METHODS:
        raise InputError(f"TwoNN method must be one of {', '.join(TWONN_METHODS)}, not {method!r}.")
    X = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X).double()
    if method == "reference":
        X = X - X.mean(dim=0, keepdim=True)
        X = X / X.norm(dim=1).mean().clamp(min=1e-300)
    else:
        X = torch.from_numpy(np.unique(X.numpy(), axis=0))
    return twonn_from_ratios(twonn_ratios(X), method, reduction_factor, discard)


def contextualisation(states: torch.Tensor, embeds: torch.Tensor, lengths: Sequence[int]) -> tuple[float, torch.Tensor]:
    """Linear contextual-memory proxy of one layer: how well each token's state [n, d]
    linearly recovers the mean *input embedding* of the tokens before it in its text.

    The paper (arXiv 2502.15007) scores C_i = −log P(prefix | e_i) with a trained decoder
    (layer pooling, an MLP and a copy of the model); this is the closest closed-form
    analogue: least squares fitted on the even-numbered texts, scored on the odd ones.
    Returns (held-out R², per-token reconstruction error ‖ŷ − y‖/‖y‖ for every token with a
    past; NaN for first tokens). Higher R² = more of the prefix is in the state.
    """
    X_rows, Y_rows, owner, where, start = [], [], [], [], 0
    for t, n in enumerate(lengths):
        if n >= 2:
            e = embeds[start : start + n].double()
            past = e.cumsum(0)[:-1] / torch.arange(1, n, dtype=e.dtype)[:, None]  # mean embedding of tokens < i
            X_rows.append(states[start + 1 : start + n].double())
            Y_rows.append(past)
            owner += [t % 2] * (n - 1)
            where += list(range(start + 1, start + n))
        start += n
    if not X_rows:
        raise InputError("Contextualisation needs texts of at least two tokens.")
    X, Y, owner = torch.cat(X_rows), torch.cat(Y_rows), torch.tensor(owner)
    fit, test = owner == 0, owner == 1
    if int(fit.sum()) < 2 or int(test.sum()) < 1:
        raise InputError("Contextualisation needs at least two texts (fitted on even, scored on odd ones).")
    mx, my = X[fit].mean(0, keepdim=True), Y[fit].mean(0, keepdim=True)
    with _lapack_threads():
        A = torch.linalg.lstsq(X[fit] - mx, Y[fit] - my, driver="gelsd").solution
    pred = (X - mx) @ A + my
    resid = (pred - Y)[test]
    r2 = 1.0 - float(resid.pow(2).sum() / (Y[test] - Y[test].mean(0, keepdim=True)).pow(2).sum())
    err = torch.full((states.shape[0],), float("nan"), dtype=torch.float64)
    err[torch.tensor(where)] = (pred - Y).norm(dim=1) / Y.norm(dim=1).clamp(min=1e-12)
    return r2, err.float()


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
class MicroscopeParams(Params):
    """Parameters of :func:`microscope`. Defaults follow LLM-Microscope: the first 4,096
    tokens, the reference TwoNN estimator on all of them."""

    kind: ClassVar[str] = "microscope"
    texts: object = field(default="mixed", metadata={"help": "shipped text set, or a list of texts"})
    max_tokens: int = field(default=4096, metadata={"help": "tokens in all (texts in order, cut to fit)"})
    max_tokens_per_text: int = field(default=256, metadata={"help": "first tokens of each text"})
    id_points: int = field(default=4096, metadata={"help": "TwoNN on the first this many tokens"})
    id_method: Literal["reference", "mle", "fit"] = field(default="reference", metadata={
        "help": "TwoNN estimator: reference (LLM-Microscope's) | mle | fit"})
    batch_size: int = field(default=8, metadata={"help": "texts per forward pass"})

    def __post_init__(self):
        if not isinstance(self.texts, str):
            object.__setattr__(self, "texts", tuple(self.texts))
        if self.id_method not in TWONN_METHODS:
            raise InputError(f"TwoNN method must be one of {', '.join(TWONN_METHODS)}, not {self.id_method!r}.")


@dataclass(frozen=True)
class MicroscopeResult(Result):
    """Per-state metrics, rows as the reference: ``embed``, ``after block l`` (l < L−1),
    ``final (normed)`` — the last block's output through the final norm — and the extra
    labelled row ``after block L−1 (pre-norm)``; per-token nonlinearity (column l = the
    transformation from row l to row l+1 of the reference rows)."""

    states: tuple  # row labels
    linearity: np.ndarray  # [n_rows − 1] state r → r+1 (nan on the extra row)
    anisotropy: np.ndarray  # [n_rows]
    intrinsic_dim: np.ndarray  # [n_rows]
    contextualisation: np.ndarray  # [n_rows] held-out R² of the linear prefix-memory proxy
    nonlinearity: torch.Tensor  # [n_tokens, n_reference_rows − 1]
    tokens: pd.DataFrame  # one row per token: text, pos, token, token_id, class, nonlinearity, context error

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
        return pd.DataFrame({
            "state": list(self.states),
            "linearity_to_next": list(self.linearity) + [np.nan],
            "anisotropy": self.anisotropy,
            "intrinsic_dim": self.intrinsic_dim,
            "id_method": self.params.id_method,
            "contextualisation_r2": self.contextualisation,
        })

    def figures(self) -> dict:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        xs = list(self.states)
        fig = make_subplots(rows=4, cols=1, shared_xaxes=True, vertical_spacing=0.05,
                            subplot_titles=("Linearity score (state → next state)", "Anisotropy",
                                            f"Intrinsic dimension (TwoNN, {self.params.id_method})",
                                            "Contextualisation (held-out R², linear prefix-memory proxy)"))
        fig.add_trace(go.Scatter(x=xs[:-1], y=self.linearity, mode="lines+markers", name="linearity"), 1, 1)
        fig.add_trace(go.Scatter(x=xs, y=self.anisotropy, mode="lines+markers", name="anisotropy"), 2, 1)
        fig.add_trace(go.Scatter(x=xs, y=self.intrinsic_dim, mode="lines+markers", name="TwoNN ID"), 3, 1)
        fig.add_trace(go.Scatter(x=xs, y=self.contextualisation, mode="lines+markers", name="contextualisation"), 4, 1)
        fig.update_layout(height=950, showlegend=False, title=f"LLM-Microscope metrics over {len(self.tokens)} tokens")
        c = self.by_class()
        bar = go.Figure(go.Bar(x=c["token_class"], y=c["mean"], text=c["count"], texttemplate="n=%{text}"))
        bar.update_layout(title="Mean per-token nonlinearity by token class (LLM-Microscope)",
                          yaxis_title="mean ‖A x̃ − ỹ‖ over layers")
        t = self.by_token().head(30)
        top = go.Figure(go.Bar(x=[repr(s) for s in t["token"]], y=t["nonlinearity"]))
        top.update_layout(title="Most nonlinear tokens (≥ 3 occurrences)", yaxis_title="mean nonlinearity")
        return {"layer_metrics": fig, "nonlinearity_by_class": bar, "most_nonlinear_tokens": top}


def _twonn_or_nan(x: torch.Tensor, method: str) -> float:
    """TwoNN of one state; NaN where too few points have distinct neighbours (a tiny
    vocabulary's embedding row is mostly duplicates)."""
    try:
        return twonn_dimension(x, method=method)
    except InputError:
        return float("nan")


@analysis(MicroscopeParams)
def microscope(model, params: MicroscopeParams, progress=False) -> MicroscopeResult:
    """Linearity, anisotropy, TwoNN dimension and contextualisation per state, and per-token
    nonlinearity, over a text set truncated to ``max_tokens`` tokens in all (texts cut to
    ``max_tokens_per_text``). TwoNN runs on the first ``id_points`` tokens."""
    from analyses.neurons import _encode_texts, resolve_texts
    from probes.capture import run
    from probes.tokens import str_tokens

    p = params
    texts_list = resolve_texts(p.texts)
    seqs, total = [], 0
    for s_ in _encode_texts(model, texts_list, p.max_tokens_per_text):
        if total >= p.max_tokens:
            break
        s_ = s_[: p.max_tokens - total]
        seqs.append(s_)
        total += len(s_)
    d = model.cfg.d_model
    if total <= d:
        raise InputError(f"The text set gives {total} tokens; the linear fit needs more than d_model = {d}.")
    L = model.cfg.n_layers
    names = [hooknames.name("resid_pre", 0)] + [hooknames.name("resid_post", i) for i in range(L)]
    out = run(model, seqs, capture=names, batch_size=p.batch_size, progress=progress, desc="microscope")
    raw = [torch.cat(out.activations[n]).float() for n in names]  # each [n_tokens, d]
    del out
    with torch.no_grad():
        normed = final_norm(model, raw[-1][None])[0].float()
    # reference rows: embeddings, after blocks 0..L−2, the final normed state; extra: pre-norm last block
    states = raw[:-1] + [normed, raw[-1]]
    labels = ("embed",) + tuple(f"after block {i}" for i in range(L - 1)) + ("final (normed)", f"after block {L - 1} (pre-norm)")
    ref = len(states) - 1  # reference rows
    residuals = [_fit(states[i], states[i + 1])[1] for i in range(ref - 1)]
    lin = np.array([float(1.0 - R.pow(2).sum()) for R in residuals] + [np.nan])
    E = torch.stack([R.norm(dim=1).float() for R in residuals], dim=1)
    del residuals
    ani = np.array([anisotropy(x) for x in states])
    k = min(p.id_points, total)
    ids = np.array([_twonn_or_nan(x[:k], p.id_method) for x in states])
    lengths = [len(q) for q in seqs]
    ctx = [contextualisation(x, states[0], lengths) for x in states]
    all_ids = torch.cat(seqs)
    toks = str_tokens(model, all_ids)
    frame = pd.DataFrame({
        "text": np.concatenate([np.full(len(q), i) for i, q in enumerate(seqs)]),
        "pos": np.concatenate([np.arange(len(q)) for q in seqs]),
        "token": toks, "token_id": all_ids.numpy(),
        "token_class": [token_class(t) for t in toks],
        "nonlinearity": E.mean(dim=1).numpy(),
        "context_error": torch.stack([c[1] for c in ctx[1:ref]], dim=1).mean(dim=1).numpy(),
    })
    return MicroscopeResult(
        model_id=model_id(model), params=params, states=labels, linearity=lin, anisotropy=ani,
        intrinsic_dim=ids, contextualisation=np.array([c[0] for c in ctx]), nonlinearity=E, tokens=frame,
    )
