"""The galaxy-scale geometry of SAE decoder directions (Li et al. 2024, "The Geometry of
Concepts: Sparse Autoencoder Feature Structure", arXiv 2410.19750, section 5).

Each SAE's decoder rows ``W_dec[i]`` are a point cloud in the residual space. As in the
paper's reference code (``ejmichaud/feature-geometry``, ``galaxy/PointCloudStructure_Galaxy.ipynb``):

* the cloud's covariance matrix (``np.cov``: centred, ``1/(n-1)``), its eigenvalues sorted
  in decreasing order;
* **power-law slope** — a least-squares line through ``(log10 rank, log10 eigenvalue)`` over
  the 0-based eigenvalue indices ``[fit_start, fit_stop)`` (the reference's ``10:150``, ranks
  11..150); ``alpha = -slope`` with its 95 % interval (Student t, ``n - 2`` degrees of freedom);
* **log volume** — the reference's log-determinant ``sum(ln eigenvalue)`` over the same
  indices; ``mean_log_eig`` is that sum over the number of eigenvalues it adds (the log of the
  geometric-mean variance per direction, comparable across fit ranges).

The reference reads Gemma Scope's decoder rows, which have unit norm; ``normalize`` (default
on) scales every row to unit norm first, so the same cloud is measured whatever the SAE's
decoder norms (the shipped SAEs' rows are unit norm to float16 precision already).
``normalize=False`` takes the rows as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd

from mechscope.probes.errors import InputError
from mechscope.probes.results import Params, Result, analysis


@dataclass(frozen=True)
class SaeGeometryParams(Params):
    kind: ClassVar[str] = "sae_geometry"
    saes: tuple[str, ...] = field(default=(), metadata={"help": "SAEs (default: every shipped one)"})
    fit_start: int = field(default=10, metadata={
        "help": "first eigenvalue index (0-based) of the power-law fit and the log volume (reference: 10)"})
    fit_stop: int = field(default=150, metadata={
        "help": "eigenvalue index the fit stops before (reference: 150)"})
    normalize: bool = field(default=True, metadata={"help": "scale every decoder row to unit norm first"})

    def __post_init__(self):
        if not isinstance(self.saes, tuple):
            object.__setattr__(self, "saes", tuple(self.saes))
        if self.fit_start < 0 or self.fit_stop - self.fit_start < 3:
            raise InputError("fit_start must be >= 0 and the fit must span at least 3 eigenvalues "
                             f"(got {self.fit_start}..{self.fit_stop}).")


def cloud_eigenvalues(points: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Eigenvalues (decreasing, float64) of the covariance of the rows of ``points`` [n, d]."""
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise InputError(f"A point cloud needs at least 2 points as rows of a matrix, not shape {x.shape}.")
    if normalize:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if (norms == 0).any():
            raise InputError(f"{int((norms == 0).sum())} points are zero vectors: they have no direction.")
        x = x / norms
    return np.linalg.eigvalsh(np.cov(x, rowvar=False))[::-1].copy()


def power_law_fit(eigenvalues: np.ndarray, fit_start: int = 10, fit_stop: int = 150) -> dict:
    """The reference's fit over ``eigenvalues[fit_start:fit_stop]`` (decreasing order):
    ``alpha`` (minus the log10-log10 slope), ``alpha_ci95``, ``log_volume`` (sum of ln
    eigenvalues there), ``mean_log_eig`` and ``n_fit``."""
    from scipy.stats import linregress, t

    lam = np.asarray(eigenvalues, dtype=np.float64)
    if fit_stop > len(lam):
        raise InputError(f"The fit stops at eigenvalue {fit_stop} but the cloud has only {len(lam)} dimensions: "
                         "lower fit_stop.")
    seg = lam[fit_start:fit_stop]
    if (seg <= 0).any():
        raise InputError(f"Eigenvalues {fit_start}..{fit_stop} include non-positive ones: the cloud spans fewer "
                         "dimensions; lower fit_stop.")
    ranks = np.arange(fit_start + 1, fit_stop + 1, dtype=np.float64)
    fit = linregress(np.log10(ranks), np.log10(seg))
    n = len(seg)
    return {"alpha": -float(fit.slope), "alpha_ci95": float(t.ppf(0.975, n - 2) * fit.stderr),
            "log_volume": float(np.log(seg).sum()), "mean_log_eig": float(np.log(seg).mean()), "n_fit": n}


@dataclass(frozen=True)
class SaeGeometryResult(Result):
    kind: ClassVar[str] = "sae_geometry"
    table: pd.DataFrame  # one row per SAE
    eigenvalues: np.ndarray  # [n_saes, d_in] float64, decreasing

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def figures(self) -> dict:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        p = self.params
        spec = go.Figure()
        for (_, row), lam in zip(self.table.iterrows(), self.eigenvalues):
            keep = lam > 0
            spec.add_trace(go.Scatter(x=np.arange(1, len(lam) + 1)[keep], y=lam[keep], mode="lines",
                                      name=f"{row['sae']} (α={row['alpha']:.2f})"))
        spec.add_vrect(x0=p.fit_start + 1, x1=p.fit_stop, fillcolor="grey", opacity=0.12, line_width=0,
                       annotation_text="fit range", annotation_position="top left")
        spec.update_layout(title="Eigenvalues of the decoder-direction cloud's covariance",
                           xaxis_title="rank", yaxis_title="eigenvalue", xaxis_type="log", yaxis_type="log")
        by = make_subplots(specs=[[{"secondary_y": True}]])
        t = self.table.sort_values("layer")
        by.add_trace(go.Scatter(x=t["layer"], y=t["alpha"], mode="lines+markers", name="power-law exponent α",
                                error_y={"type": "data", "array": t["alpha_ci95"]}), secondary_y=False)
        by.add_trace(go.Scatter(x=t["layer"], y=t["log_volume"], mode="lines+markers",
                                name=f"log volume Σ ln λ (ranks {p.fit_start + 1}–{p.fit_stop})"), secondary_y=True)
        by.update_layout(title="Galaxy shape by layer (Li et al. 2024)", xaxis_title="layer")
        by.update_yaxes(title_text="α", secondary_y=False)
        by.update_yaxes(title_text="Σ ln λ", secondary_y=True)
        return {"by_layer": by, "spectrum": spec}


@analysis(SaeGeometryParams)
def sae_geometry(model, params: SaeGeometryParams) -> SaeGeometryResult:
    """Eigenvalue spectrum, power-law exponent and log volume of each SAE's decoder cloud.

    ``model`` may be None (only the SAEs' weights are read); then the result names the model
    that the first SAE is shipped for.
    """
    from mechscope.probes.hooknames import layer_of
    from mechscope.saes.store import load_sae, shipped_names

    names = list(params.saes) or shipped_names()
    if not names:
        raise InputError("No SAE to measure: name one (none is shipped here).")
    rows, spectra = [], []
    for name in names:
        sae = load_sae(name, model=model, cached=True)
        w = sae.W_dec.detach().double().cpu().numpy()
        lam = cloud_eigenvalues(w, normalize=params.normalize)
        rows.append({"sae": name, "hook": sae.cfg.metadata.hook_name, "layer": layer_of(sae.cfg.metadata.hook_name), "n_latents": w.shape[0],
                     "d_in": w.shape[1], **power_law_fit(lam, params.fit_start, params.fit_stop)})
        spectra.append(lam)
    if len({len(s) for s in spectra}) > 1:
        raise InputError("These SAEs read spaces of different widths: measure them separately.")
    if model is not None:
        from mechscope.probes.models import model_id

        mid = model_id(model)
    else:
        mid = names[0].split("/")[0] if "/" in names[0] else "model"
    return SaeGeometryResult(model_id=mid, params=params, table=pd.DataFrame(rows), eigenvalues=np.stack(spectra))
