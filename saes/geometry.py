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

**Crystals** (``crystals=True``; section 3 of the paper, reference ``atom/``): parallelogram and
trapezoid faces are pairs of latent pairs whose difference vectors are parallel
(man−woman ∥ king−queen). Among ``crystal_latents`` latents (a seeded sample, unit decoder
rows) every difference ``w_i - w_j`` (i < j) is formed — or, with ``crystal_neighbours`` k > 0,
only those of each latent with its k nearest latents (cosine), which makes the search over all
4,096 latents affordable and keeps the short edges that analogies are made of (king−queen, not
king−carrot); two differences of disjoint latent pairs
are parallel when ``|cos| >= crystal_cos``; a **crystal** is a connected group of at least
``crystal_min_size`` mutually linked differences (a parallelogram when the two edges have equal
length, a trapezoid otherwise; ``length_ratio`` reports the spread). ``crystal_distractors``
global directions — the top principal components of the sampled cloud, such as the paper's
word-length direction — are projected out first (0: none). The crystals' quality is the
reference's: the silhouette score (cosine) of the crystals' difference vectors labelled by
crystal, raw and after linear discriminant analysis onto ``min(crystals - 1, 8)`` components
(the reference's ``LDA(n_components=8)`` + ``silhouette_score``), which projects out the
directions that vary within crystals. The shuffled control runs the same search on the cloud
with each coordinate permuted independently across latents (``n_shuffles`` times).
"""

from __future__ import annotations

import json
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
    n_shuffles: int = field(default=20, metadata={"help": "shuffled-label controls of the AMI (crystals: at most 5)"})
    crystals: bool = field(default=False, metadata={
        "help": "also search for crystals: parallel difference vectors between latents (weights only)"})
    crystal_latents: int = field(default=128, metadata={"help": "latents sampled for the crystal search"})
    crystal_cos: float = field(default=0.9, metadata={"help": "|cos| at which two differences count as parallel"})
    crystal_min_size: int = field(default=3, metadata={"help": "parallel differences a crystal needs"})
    crystal_distractors: int = field(default=0, metadata={
        "help": "top principal directions of the cloud projected out before the crystal search"})
    crystal_neighbours: int = field(default=0, metadata={
        "help": "0: every pair of the sampled latents; k: each latent paired with its k nearest latents"})
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
        if (self.crystal_latents < 4 or not 0 < self.crystal_cos <= 1 or self.crystal_min_size < 2
                or self.crystal_distractors < 0 or self.crystal_neighbours < 0):
            raise InputError("crystal_latents must be >= 4, crystal_cos in (0, 1], crystal_min_size >= 2, "
                             "crystal_distractors and crystal_neighbours >= 0.")
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


def project_out(points: np.ndarray, k: int) -> np.ndarray:
    """``points`` with their top ``k`` principal directions (of the centred cloud) removed."""
    x = np.asarray(points, dtype=np.float64)
    if k <= 0:
        return x
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    v = vt[:k]
    return x - (x @ v.T) @ v


def neighbour_pairs(points: np.ndarray, k: int) -> np.ndarray:
    """[P, 2] pairs (i < j, unique) joining each row of ``points`` to its ``k`` nearest rows by
    cosine similarity."""
    x = np.asarray(points, dtype=np.float64)
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
    k = min(k, len(x) - 1)
    pairs = []
    for a in range(0, len(u), 2048):
        sim = u[a : a + 2048] @ u.T
        rows = np.arange(a, min(a + 2048, len(u)))
        sim[rows - a, rows] = -np.inf
        near = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        pairs.append(np.stack([np.repeat(rows, k), near.ravel()], 1))
    p = np.sort(np.concatenate(pairs), axis=1)
    return np.unique(p, axis=0)


def find_crystals(points: np.ndarray, cos_threshold: float = 0.9, min_size: int = 3, block: int = 2048,
                  pairs: np.ndarray | None = None) -> dict:
    """Crystals among the rows of ``points`` [m, d] (see the module doc): every difference
    ``p_i - p_j`` (i < j), or those of ``pairs`` [P, 2] only; links between differences of
    disjoint pairs with ``|cos| >= cos_threshold``; connected groups of ``min_size``+ differences.

    Returns ``pairs`` [P, 2], ``diffs`` [P, d], ``labels`` [P] (crystal index or -1) and
    ``crystals``: per crystal ``{"size", "pairs", "parallelism"`` (mean |cos| of its
    differences to their sign-aligned mean direction), ``"length_ratio"`` (longest / shortest
    difference; 1 for parallelograms)``}``, largest first."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    x = np.asarray(points, dtype=np.float64)
    m = x.shape[0]
    i, j = np.triu_indices(m, 1) if pairs is None else (np.asarray(pairs)[:, 0], np.asarray(pairs)[:, 1])
    diffs = x[i] - x[j]
    norms = np.linalg.norm(diffs, axis=1)
    ok = norms > 0
    unit = np.where(ok[:, None], diffs / np.where(ok, norms, 1.0)[:, None], 0.0)
    rows, cols = [], []
    unit32 = unit.astype(np.float32)  # the threshold test needs no more precision
    for a in range(0, len(unit), block):
        c = np.abs(unit32[a : a + block] @ unit32.T)
        r, q = np.nonzero(c >= cos_threshold)
        r = r + a
        keep = (r < q) & (i[r] != i[q]) & (i[r] != j[q]) & (j[r] != i[q]) & (j[r] != j[q])
        rows.append(r[keep])
        cols.append(q[keep])
    r, q = np.concatenate(rows), np.concatenate(cols)
    n = len(unit)
    _, comp = connected_components(coo_matrix((np.ones(len(r)), (r, q)), shape=(n, n)), directed=False)
    sizes = np.bincount(comp, minlength=n)
    labels = np.full(n, -1)
    crystals = []
    for c in sorted(np.flatnonzero(sizes >= min_size), key=lambda c: -sizes[c]):
        members = np.flatnonzero(comp == c)
        u = unit[members]
        u = u * np.sign(u @ u[0])[:, None]  # align signs: p_i - p_j and p_j - p_i are the same edge
        mean = u.mean(0)
        mean /= np.linalg.norm(mean)
        labels[members] = len(crystals)
        crystals.append({"size": int(len(members)), "pairs": [(int(i[k]), int(j[k])) for k in members],
                         "parallelism": float(np.abs(u @ mean).mean()),
                         "length_ratio": float(norms[members].max() / norms[members].min())})
    return {"pairs": np.stack([i, j], 1), "diffs": diffs, "labels": labels, "crystals": crystals}


def crystal_quality(diffs: np.ndarray, labels: np.ndarray, max_components: int = 8) -> dict:
    """The reference's quality of clusters of difference vectors: silhouette score of the
    labelled differences (label >= 0; signs aligned within each cluster), raw and after LDA
    onto ``min(clusters - 1, max_components)`` components. NaN with fewer than 2 clusters."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.metrics import silhouette_score

    keep = labels >= 0
    y = labels[keep]
    n_cl = len(np.unique(y))
    if n_cl < 2 or keep.sum() <= n_cl:
        return {"silhouette": float("nan"), "silhouette_lda": float("nan")}
    x = np.asarray(diffs, dtype=np.float64)[keep].copy()
    for c in np.unique(y):
        g = y == c
        x[g] *= np.sign(x[g] @ x[g][0])[:, None]
    lda = LinearDiscriminantAnalysis(n_components=min(n_cl - 1, max_components)).fit(x, y)
    return {"silhouette": float(silhouette_score(x, y, metric="cosine")),
            "silhouette_lda": float(silhouette_score(lda.transform(x), y))}


def crystal_summary(directions: np.ndarray, n_latents: int = 128, cos_threshold: float = 0.9, min_size: int = 3,
                    distractors: int = 0, n_shuffles: int = 3, seed: int = 0, normalize: bool = True,
                    neighbours: int = 0) -> dict:
    """Crystal search on a seeded sample of ``n_latents`` directions (unit norm with
    ``normalize``; every pair, or each latent with its ``neighbours`` nearest: :func:`neighbour_pairs`)
    and on ``n_shuffles`` coordinate-shuffled copies (the control, paired the same way among
    its own points): counts, sizes, parallelism and the reference's silhouette quality
    (:func:`crystal_quality`)."""
    w = np.asarray(directions, dtype=np.float64)
    if normalize:
        w = w / np.linalg.norm(w, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(w), size=min(n_latents, len(w)), replace=False))
    def search(points):
        x = project_out(points, distractors)
        return find_crystals(x, cos_threshold, min_size, pairs=neighbour_pairs(x, neighbours) if neighbours else None)

    found = search(w[pick])
    q = crystal_quality(found["diffs"], found["labels"])
    null = []
    for _ in range(n_shuffles):
        null.append(len(search(np.stack([rng.permutation(col) for col in w[pick].T], 1))["crystals"]))
    cr = found["crystals"]
    return {"crystal_latents": len(pick), "n_crystals": len(cr),
            "crystal_max_size": max((c["size"] for c in cr), default=0),
            "crystal_parallelism": float(np.mean([c["parallelism"] for c in cr])) if cr else float("nan"),
            "crystal_silhouette": q["silhouette"], "crystal_silhouette_lda": q["silhouette_lda"],
            "n_crystals_shuffled": float(np.mean(null)) if null else float("nan"),
            "crystal_latent_ids": [[(int(pick[a]), int(pick[b])) for a, b in c["pairs"]] for c in cr]}


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
        if "n_crystals" in self.table:
            cr = go.Figure([go.Bar(x=t["layer"], y=t["n_crystals"], name="crystals"),
                            go.Bar(x=t["layer"], y=t["n_crystals_shuffled"], name="shuffled control")])
            cr.update_layout(title=f"Crystals: groups of ≥ {p.crystal_min_size} parallel latent differences "
                                   f"(|cos| ≥ {p.crystal_cos}) among {p.crystal_latents} latents"
                                   + (f", each paired with its {p.crystal_neighbours} nearest" if p.crystal_neighbours else ""),
                             xaxis_title="layer", yaxis_title="crystals", barmode="group")
            figs["crystals"] = cr
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
    if params.crystals:
        for row, name in zip(rows, names):
            w = load_sae(name, model=model, cached=True).W_dec.detach().double().cpu().numpy()
            summ = crystal_summary(w, params.crystal_latents, params.crystal_cos, params.crystal_min_size,
                                   params.crystal_distractors, min(params.n_shuffles, 5), params.seed,
                                   params.normalize, params.crystal_neighbours)
            row.update({k: v for k, v in summ.items() if k != "crystal_latent_ids"})
            row["crystals"] = json.dumps(summ["crystal_latent_ids"][:20])
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
