"""Whitening transforms of the residual stream (docs/isotropy.md#whitening), as stored artefacts and as
an intervention.

A fitted whitening is the affine map x ↦ μ + (x − μ)·W at one hook site, W [d, d] in the
model's own basis:

* ``zca`` — ZCA whitening: W = U (Λ + ε)^{-1/2} Uᵀ from the fitting cloud's covariance
  C = U Λ Uᵀ (tokens weighted equally), shifted so the result is centred (the map is
  x ↦ (x − μ)·W; ``recentre`` adds μ back only for the intervention's mixing).
* ``zipfian`` — Zipfian whitening (Yokoi et al. 2024): the mean and covariance weight each
  token *type* by its frequency p(w) in the shipped corpus: a token of type w in the fitting
  set has weight p(w) / count_fit(w), so every type carries its corpus frequency however
  often the fitting texts happen to use it. Yokoi et al. use PCA whitening (U Λ^{-1/2}); we
  store the ZCA form U Λ^{-1/2} Uᵀ, which differs by the rotation Uᵀ only — no score here
  but the per-dimension outlier count depends on a rotation — and keeps the residual basis,
  so it can be written back into the model.
* ``outlier_removal`` — the outlier dimensions (variance > ``multiple`` × the average) are
  set to their fitted mean; W = I with those diagonal entries 0.

On disk: a safetensors file (``matrix``, ``mean``, and the ``dims`` removed) with the
method, the hook site and the fitting set in its metadata; :func:`save` returns the file's
sha256, which :class:`Whitening` (the intervention: a path and a digest, never a matrix)
checks before using it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import ClassVar
from pathlib import Path

import torch

from mechscope.probes import hooknames
from mechscope.probes.checksums import sha256_file
from mechscope.probes.covariance import CloudStats
from mechscope.probes.errors import ChecksumError, InputError
from mechscope.probes.interventions import INTERVENTIONS, Data, HookList


METHODS = ("zca", "zipfian", "outlier_removal")


@dataclass(frozen=True)
class WhiteningFit:
    """A fitted whitening: x ↦ (x − mean)·matrix at hook ``site``."""

    method: str
    site: str
    matrix: torch.Tensor  # [d, d] float64
    mean: torch.Tensor  # [d] float64
    dims: tuple[int, ...] = ()  # outlier dimensions removed (outlier_removal only)
    info: dict = field(default_factory=dict)  # fitting set, eps, multiple, ...

    def transform(self, x: torch.Tensor, drop_removed: bool = False) -> torch.Tensor:
        """Whitened points (float64); ``drop_removed`` leaves out the removed dimensions
        (for scoring what is left)."""
        y = (x.double().to(self.matrix.device) - self.mean) @ self.matrix
        if drop_removed and self.dims:
            keep = [i for i in range(y.shape[-1]) if i not in set(self.dims)]
            y = y[..., keep]
        return y


def _matrix(cov: torch.Tensor, eps: float) -> torch.Tensor:
    evals, evecs = torch.linalg.eigh((cov + cov.T) / 2)
    evals = evals.clamp_min(0)
    return (evecs / torch.sqrt(evals + eps)) @ evecs.T


def fit_from_stats(method: str, site: str, stats: CloudStats, eps: float = 1e-8, multiple: float = 5.0,
                   info: dict | None = None) -> WhiteningFit:
    """A whitening from streamed statistics (weighted for ``zipfian``)."""
    if method not in METHODS:
        raise InputError(f"Unknown whitening {method!r}: choose from {', '.join(METHODS)}.")
    if not eps >= 0:
        raise InputError("eps must be >= 0.")
    mean = stats.mean()[0]
    cov = stats.cov(unbiased=method != "zipfian")[0]
    if method == "outlier_removal":
        var = torch.diagonal(cov)
        dims = tuple(int(i) for i in torch.nonzero(var > multiple * var.mean()).reshape(-1))
        w = torch.eye(cov.shape[0], dtype=torch.float64, device=cov.device)
        for i in dims:
            w[i, i] = 0
        return WhiteningFit(method, site, w, mean, dims, {**(info or {}), "multiple": multiple})
    # ε relative to the average variance, so it means the same at every depth
    scale = float(torch.trace(cov)) / cov.shape[0]
    return WhiteningFit(method, site, _matrix(cov, eps * scale), mean, (), {**(info or {}), "eps": eps})


def save(fit: WhiteningFit, path: str | Path) -> str:
    """Write ``fit`` as safetensors; returns the file's sha256 (also written to PATH.sha256)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    meta = {"method": fit.method, "site": fit.site, "info": json.dumps(fit.info)}
    save_file({"matrix": fit.matrix.cpu().contiguous(), "mean": fit.mean.cpu().contiguous(),
               "dims": torch.tensor(fit.dims, dtype=torch.long)}, str(tmp), metadata=meta)
    digest = sha256_file(tmp)
    tmp.replace(path)
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
    return digest


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, sha256: str, mtime: float) -> WhiteningFit:
    from safetensors import safe_open

    p = Path(path)
    actual = sha256_file(p)
    if sha256 and actual != sha256:
        raise ChecksumError(f"Whitening file {p} is corrupted or changed: sha256 {actual[:12]}… is not {sha256[:12]}….")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return WhiteningFit(meta["method"], meta["site"], tensors["matrix"].double(), tensors["mean"].double(),
                            tuple(int(i) for i in tensors["dims"].tolist()), json.loads(meta.get("info", "{}")))
    except ChecksumError:
        raise
    except Exception as exc:
        raise InputError(f"Cannot read the whitening file {p}: {type(exc).__name__}: {exc}".splitlines()[0]) from None


def load(path: str | Path, sha256: str | None = None) -> WhiteningFit:
    """Read a saved whitening, checking its sha256 (given, or the PATH.sha256 sidecar)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"No whitening file at {p}.")
    if sha256 is None:
        side = p.with_name(p.name + ".sha256")
        sha256 = side.read_text().split()[0] if side.is_file() else ""
    return _load_cached(str(p.resolve()), sha256, p.stat().st_mtime)


@INTERVENTIONS.register("whitening")
@dataclass(frozen=True)
class Whitening(Data):
    """Apply a saved whitening to the residual stream at its site:
    x ← (1 − strength)·x + strength·(μ + (x − μ)·W) — with ``keep_norm`` each token's
    norm is restored afterwards (whitened states are on another scale than the model's)."""

    positionwise: ClassVar[bool] = True

    path: str
    sha256: str
    strength: float = 1.0
    keep_norm: bool = True

    def validate(self, model) -> None:
        if not 0 <= self.strength <= 1:
            raise InputError(f"Whitening strength must lie in [0, 1], not {self.strength!r}.")
        fit = load(self.path, self.sha256)
        if fit.site not in model.hook_dict:
            raise InputError(f"The whitening was fitted at {fit.site!r}, which this model does not have.")
        if fit.matrix.shape[0] != model.cfg.d_model:
            raise InputError(f"The whitening is {fit.matrix.shape[0]}-dimensional; this model's d_model is {model.cfg.d_model}.")

    def hooks(self, model) -> HookList:
        fit = load(self.path, self.sha256)
        dev, dt = model.cfg.device, model.cfg.dtype
        w, mu = fit.matrix.to(dev, dt), fit.mean.to(dev, dt)
        a, keep = float(self.strength), self.keep_norm

        def whiten(resid: torch.Tensor, hook) -> torch.Tensor:
            white = mu + (resid - mu) @ w
            out = (1 - a) * resid + a * white
            if keep:
                out = out * (resid.norm(dim=-1, keepdim=True) / out.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            return out

        return [(fit.site, whiten)]

    def describe(self) -> str:
        return f"whitening {Path(self.path).name} ×{self.strength:g}"


def site_for_depth(model, depth: int) -> str:
    """Depth 0 = embeddings (blocks.0.hook_resid_pre), depth l = after block l − 1."""
    from mechscope.probes.errors import check_range

    check_range("depth", depth, model.cfg.n_layers + 1)
    return hooknames.name("resid_pre", 0) if depth == 0 else hooknames.name("resid_post", depth - 1)
