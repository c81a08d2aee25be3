"""Whitening fitted on one text set at one residual depth and applied to another: ZCA,
Zipfian and outlier removal, every score before and after (docs/isotropy.md#whitening)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np
import pandas as pd
import torch

from mechscope.analyses.isotropy.analysis import check_counts, token_ids
from mechscope.analyses.isotropy.clouds import _full_cloud, _sample_labels, _SiteState, sample_slots
from mechscope.analyses.isotropy.scores import C0_CHOICES, check_multiple, check_zeta
from mechscope.probes import capture
from mechscope.probes.covariance import CloudStats
from mechscope.probes.errors import InputError
from mechscope.probes.models import model_id
from mechscope.probes.results import Result, analysis
from mechscope.probes.texts import TextInputs, max_tokens_field, n_texts_field, select_texts, text_set_field, text_set_names
from mechscope.probes.tokens import text_ids


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
class WhiteningParams(TextInputs):
    """Parameters of :func:`whitening_effect`: fit on ``text_set`` (or the given ``texts``),
    apply to ``apply_text_set``; from one set, disjoint halves (see :func:`split_texts`)."""

    kind: ClassVar[str] = "whitening"
    LEGACY_FIELDS: ClassVar[dict] = {"fit_text_set": "text_set"}
    text_set: str | None = text_set_field("mixed", "shipped text set to fit on")
    n_texts: int | None = n_texts_field(24, "texts in each of the two sets (None: all)")
    max_tokens: int | None = max_tokens_field(128)
    depth: int | None = field(default=None, metadata={"help": "residual depth (0 = embeddings; None: the last)"})
    methods: tuple[str, ...] = field(default=("zca", "zipfian", "outlier_removal"), metadata={"help": "whitenings"})
    apply_text_set: str = field(default="mixed", metadata={
        "help": "shipped text set to apply to (the fitting set, or given texts: their other half)", "choices": text_set_names})
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

        super().__post_init__()
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
        check_counts(self)


def split_texts(params: WhiteningParams) -> tuple[list, list]:
    """Fitting and held-out texts. Two different shipped sets: the first ``n_texts`` of each.
    One set (or the given texts): per domain, even-numbered texts fit and odd ones are held
    out, ``n_texts`` in each half spread evenly over the domains."""
    p = params
    if p.texts is None and p.text_set != p.apply_text_set:
        return (select_texts(None, p.text_set, p.n_texts, grouped=True),
                select_texts(None, p.apply_text_set, p.n_texts, grouped=True))
    groups: dict[str, list] = {}
    for t in select_texts(p.texts, p.text_set, None, grouped=True):
        groups.setdefault(t.domain, []).append(t)
    n = p.n_texts
    per = [None if n is None else n // len(groups) + (1 if i < n % len(groups) else 0) for i in range(len(groups))]
    a = [t for ts, k in zip(groups.values(), per) for t in ts[0::2][:k]]
    b = [t for ts, k in zip(groups.values(), per) for t in ts[1::2][:k]]
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
    fit_texts, apply_texts = split_texts(params)
    if not fit_texts or not apply_texts:
        raise InputError("The fitting or the held-out set is empty: use more texts.")
    fit_seqs = token_ids(model, fit_texts, params.max_tokens)
    apply_seqs = token_ids(model, apply_texts, params.max_tokens)
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
    info = {"fit_text_set": params.text_set, "n_texts": params.n_texts, "max_tokens": params.max_tokens,
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
