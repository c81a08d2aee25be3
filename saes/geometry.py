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

**Lobes** (``lobes=True``; section 4 of the paper, reference ``brain/``): latents that fire
in the same window of ``window`` tokens co-occur (the reference's ``k``, 256 tokens of Pile
documents; here full windows from position 1 of the shipped texts, position 0 being left out as
in the SAEs' training). Two spectral clusterings (scikit-learn, ``affinity="precomputed"``,
k-means labels) of the latents that fire in at least ``min_fires`` windows: one on the phi
coefficient of co-occurrence plus 1 (``cluster_phi.py``), one on the angular similarity
``1 - arccos(cos)/pi`` of the decoder directions (``cluster_ang.py``); their agreement is the
adjusted mutual information (AMI), against a shuffled control (the co-occurrence labels
permuted, ``n_shuffles`` times).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from mechscope.probes.errors import InputError
from mechscope.probes.results import Result, analysis
from mechscope.probes.texts import TextInputs, encode_texts, n_texts_field


@dataclass(frozen=True)
class SaeGeometryParams(TextInputs):
    kind: ClassVar[str] = "sae_geometry"
    saes: tuple[str, ...] = field(default=(), metadata={"help": "SAEs (default: every shipped one)"})
    fit_start: int = field(default=10, metadata={
        "help": "first eigenvalue index (0-based) of the power-law fit and the log volume (reference: 10)"})
    fit_stop: int = field(default=150, metadata={
        "help": "eigenvalue index the fit stops before (reference: 150)"})
    normalize: bool = field(default=True, metadata={"help": "scale every decoder row to unit norm first"})
    lobes: bool = field(default=False, metadata={
        "help": "also cluster latents by co-occurrence and by geometry (reads the texts with the model)"})
    n_clusters: int = field(default=8, metadata={"help": "clusters of each spectral clustering"})
    window: int = field(default=64, metadata={"help": "tokens per co-occurrence window (reference: 256)"})
    min_fires: int = field(default=5, metadata={"help": "latents clustered: those firing in this many windows"})
    n_shuffles: int = field(default=20, metadata={"help": "shuffled-label controls of the AMI"})
    seed: int = 0
    batch_size: int = field(default=8, metadata={"help": "texts per forward"})
    n_texts: int | None = n_texts_field(128)

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.saes, tuple):
            object.__setattr__(self, "saes", tuple(self.saes))
        if self.fit_start < 0 or self.fit_stop - self.fit_start < 3:
            raise InputError("fit_start must be >= 0 and the fit must span at least 3 eigenvalues "
                             f"(got {self.fit_start}..{self.fit_stop}).")
        if self.n_clusters < 2 or self.window < 1 or self.min_fires < 1 or self.n_shuffles < 1 or self.batch_size < 1:
            raise InputError("n_clusters must be >= 2; window, min_fires, n_shuffles and batch_size >= 1.")


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


def phi_coefficient(cooc: np.ndarray, n_windows: int) -> np.ndarray:
    """Phi coefficient of every pair of latents from co-occurrence counts (``cooc[i, i]``: the
    windows where i fires) over ``n_windows`` windows; 0 where undefined."""
    c = np.asarray(cooc, dtype=np.float64)
    ni = np.diag(c)
    n10 = ni[:, None] - c
    n00 = n_windows - ni[:, None] - ni[None, :] + c
    den = np.sqrt(ni[:, None] * (n_windows - ni[:, None]) * ni[None, :] * (n_windows - ni[None, :]))
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = (c * n00 - n10 * n10.T) / den
    return np.where(den > 0, phi, 0.0)


def angular_similarity(directions: np.ndarray) -> np.ndarray:
    """``1 - arccos(cos)/pi`` between the rows (scaled to unit norm): 1 same, 0 opposite."""
    u = np.asarray(directions, dtype=np.float64)
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    return 1.0 - np.arccos(np.clip(u @ u.T, -1.0, 1.0)) / np.pi


def lobe_agreement(cooc_affinity: np.ndarray, geo_affinity: np.ndarray, n_clusters: int, seed: int = 0,
                   n_shuffles: int = 20) -> dict:
    """Spectral clusterings of the two affinities; AMI between them, and the mean and standard
    deviation of the AMI with the co-occurrence labels shuffled."""
    from sklearn.cluster import SpectralClustering
    from sklearn.metrics import adjusted_mutual_info_score as ami

    if len(cooc_affinity) <= n_clusters:
        raise InputError(f"Only {len(cooc_affinity)} latents to put in {n_clusters} clusters: read more texts "
                         "or lower min_fires / n_clusters.")

    def labels(a):
        return SpectralClustering(n_clusters=n_clusters, affinity="precomputed", assign_labels="kmeans",
                                  random_state=seed).fit_predict(a)

    a, b = labels(cooc_affinity), labels(geo_affinity)
    rng = np.random.default_rng(seed)
    null = [ami(rng.permutation(a), b) for _ in range(n_shuffles)]
    return {"ami": float(ami(a, b)), "ami_shuffled": float(np.mean(null)), "ami_shuffled_sd": float(np.std(null)),
            "cooc_labels": a, "geo_labels": b}


@torch.no_grad()
def cooccurrence(model, saes: dict, params: SaeGeometryParams, progress=None) -> dict:
    """Per SAE name: (co-occurrence counts [d_sae, d_sae], number of windows) over the texts."""
    from mechscope.probes.capture import run

    seqs = [t.tolist() for t in encode_texts(model, params.selected(), params.max_tokens)]
    w = params.window
    counts = {n: [torch.zeros(s.cfg.d_sae, s.cfg.d_sae), 0] for n, s in saes.items()}

    def reducer(hook):
        def reduce(act, site, batch):  # noqa: ARG001
            for b, n in enumerate(batch.lengths_list()):
                full = (n - 1) // w  # full windows from position 1
                if not full:
                    continue
                x = act[b, 1 : 1 + full * w].float()
                for name, sae in saes.items():
                    if sae.cfg.metadata.hook_name == hook:
                        f = (sae.encode(x) > 0).view(full, w, -1).any(1).float().cpu()
                        counts[name][0] += f.T @ f  # exact in float32 below 2^24 windows
                        counts[name][1] += full
        return reduce

    hooks = sorted({s.cfg.metadata.hook_name for s in saes.values()})
    run(model, seqs, reducers={h: reducer(h) for h in hooks}, batch_size=params.batch_size,
        progress=progress or False, desc="texts")
    return {n: (c.double().numpy(), k) for n, (c, k) in counts.items()}


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
        figs = {"by_layer": by, "spectrum": spec}
        if "ami" in self.table:
            lobes = go.Figure([go.Scatter(x=t["layer"], y=t["ami"], mode="lines+markers", name="co-occurrence vs geometry"),
                               go.Scatter(x=t["layer"], y=t["ami_shuffled"], mode="lines+markers",
                                          error_y={"type": "data", "array": t["ami_shuffled_sd"]},
                                          name="shuffled labels")])
            lobes.update_layout(title=f"Lobes: agreement of {p.n_clusters} co-occurrence and geometry clusters",
                                xaxis_title="layer", yaxis_title="adjusted mutual information")
            figs["lobes"] = lobes
        return figs


@analysis(SaeGeometryParams)
def sae_geometry(model, params: SaeGeometryParams, progress=None) -> SaeGeometryResult:
    """Eigenvalue spectrum, power-law exponent and log volume of each SAE's decoder cloud;
    with ``lobes``, co-occurrence vs geometry clusters (AMI) per SAE.

    ``model`` may be None without ``lobes`` (only the SAEs' weights are read); then the result
    names the model that the first SAE is shipped for.
    """
    if params.lobes and model is None:
        raise InputError("lobes reads the texts through the model: load one.")
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
        if spectra and len(lam) != len(spectra[0]):
            raise InputError("These SAEs read spaces of different widths: measure them separately.")
        hook = sae.cfg.metadata.hook_name
        rows.append({"sae": name, "hook": hook, "layer": layer_of(hook), "n_latents": w.shape[0], "d_in": w.shape[1],
                     **power_law_fit(lam, params.fit_start, params.fit_stop)})
        spectra.append(lam)
    if params.lobes:
        saes = {n: load_sae(n, model=model, cached=True) for n in names}
        cooc = cooccurrence(model, saes, params, progress=progress)
        for row, name in zip(rows, names):
            c, n_windows = cooc[name]
            keep = np.flatnonzero(np.diag(c) >= params.min_fires)
            if n_windows == 0:
                raise InputError(f"No text has {params.window + 1} tokens: lower window or raise max_tokens.")
            w = saes[name].W_dec.detach().double().cpu().numpy()[keep]
            agree = lobe_agreement(phi_coefficient(c[np.ix_(keep, keep)], n_windows) + 1.0, angular_similarity(w),
                                   params.n_clusters, params.seed, params.n_shuffles)
            row.update({"n_windows": n_windows, "n_clustered": len(keep),
                        **{k: v for k, v in agree.items() if not k.endswith("labels")}})
    if model is not None:
        from mechscope.probes.models import model_id

        mid = model_id(model)
    else:
        mid = names[0].split("/")[0] if "/" in names[0] else "model"
    return SaeGeometryResult(model_id=mid, params=params, table=pd.DataFrame(rows), eigenvalues=np.stack(spectra))
