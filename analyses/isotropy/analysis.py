"""The isotropy analysis: every score of the residual stream at every depth, every head's
output, W_E and W_U, streamed over a text set (docs/isotropy.md#isoscore)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import pandas as pd
import torch

from mechscope.analyses.isotropy.clouds import (
    _BatchPlan,
    _full_cloud,
    _head_rows,
    _preallocate,
    _sample_labels,
    _SiteState,
    sample_slots,
)
from mechscope.analyses.isotropy.result import FINAL_NORM, IsotropyResult
from mechscope.analyses.isotropy.scores import C0_CHOICES, _partition_with, check_multiple, check_zeta, covariance, random_pairs
from mechscope.probes import capture, hooknames
from mechscope.probes.covariance import Workspace
from mechscope.probes.errors import InputError
from mechscope.probes.heap import release_heap
from mechscope.probes.models import model_id
from mechscope.probes.results import analysis
from mechscope.probes.texts import TextInputs, encode_texts, max_tokens_field, n_texts_field


@dataclass(frozen=True)
class IsotropyParams(TextInputs):
    """Parameters of :func:`isotropy` (texts: the shared block of :class:`probes.texts.TextInputs`)."""

    kind: ClassVar[str] = "isotropy"
    n_texts: int | None = n_texts_field(24)
    max_tokens: int | None = max_tokens_field(128)
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
        super().__post_init__()
        check_zeta(self.zeta)
        check_multiple(self.outlier_multiple)
        if self.c0 not in C0_CHOICES:
            raise InputError(f"Unknown C0 {self.c0!r}: choose from {', '.join(C0_CHOICES)}.")
        if self.cov_dtype not in ("float32", "float64"):
            raise InputError("cov_dtype must be float32 or float64.")
        check_counts(self)


def check_counts(p) -> None:
    """The integer parameters shared by the isotropy analyses: max_tokens and n_sample ≥ 2, the others ≥ 1."""
    for name in ("n_texts", "max_tokens", "n_sample", "n_pairs", "batch_size"):
        v = getattr(p, name)
        if name in ("n_texts", "max_tokens") and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < (2 if name in ("max_tokens", "n_sample") else 1):
            raise InputError(f"{name} must be an integer >= {2 if name in ('max_tokens', 'n_sample') else 1}, not {v!r}.")


def token_ids(model, texts, max_tokens: int | None) -> list[list[int]]:
    """Token ids of each text (no BOS: the clouds are the texts' own tokens), at least 2 per
    text (within-sequence similarity compares token pairs)."""
    seqs = [s.tolist() for s in encode_texts(model, texts, max_tokens, prepend_bos=False)]
    if any(len(s) < 2 for s in seqs):
        raise InputError("Every text needs at least 2 tokens (within-sequence similarity compares token pairs).")
    return seqs


def weight_clouds(model) -> dict[str, torch.Tensor]:
    """W_E rows (one point per token) and W_U columns (one point per token)."""
    return {"W_E": model.W_E.detach(), "W_U": model.W_U.detach().T}


# Where the per-cloud linear algebra runs (float64); None: the model's device (on a GPU the
# eigendecompositions run faster there than on the host, and agree to float64 rounding).
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
    import mechscope.analyses.isotropy as package  # LINALG_DEVICE is set on the package

    dev = torch.device(linalg_device or getattr(package, "LINALG_DEVICE", None) or LINALG_DEVICE or model.cfg.device)
    seqs = token_ids(model, params.selected(grouped=True), params.max_tokens)
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
