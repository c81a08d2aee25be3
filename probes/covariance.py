"""Streamed mean and covariance of point clouds (O(d²) per cloud), reduced inside hooks.

:class:`CloudStats` folds batches of points into a shifted sum and sum of outer products,
in float64, optionally weighted. Used by the isotropy analyses and by whitening.
"""

from __future__ import annotations

import torch

from probes.errors import InputError


class CloudStats:
    """Running (weighted) mean and covariance of G clouds at once (points arrive as [m, G, d]).

    Sums are taken around a shift K (the first batch's mean), in float64:
    s = Σ w(x − K), M = Σ w(x − K)(x − K)ᵀ, W = Σ w. The shift avoids the cancellation that
    ruins E[xxᵀ] − μμᵀ when the mean is large (residual streams). ``dtype`` is the dtype of
    each batch's product (float32: fast, ~1e-7 relative per batch; float64: exact)."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self.n = 0  # points seen
        self.w = 0.0  # total weight (= n when unweighted)
        self.shift = self.s = self.m = None

    def add(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        if x.ndim == 2:
            x = x[:, None, :]
        if x.shape[0] == 0:
            return
        if self.shift is None:
            self.shift = x.detach().double().mean(0).to(self.dtype).double()  # [G, d], exact in dtype
            g, d = self.shift.shape
            self.s = torch.zeros(g, d, dtype=torch.float64, device=x.device)
            self.m = torch.zeros(g, d, d, dtype=torch.float64, device=x.device)
        xc = x.detach().to(self.dtype) - self.shift.to(self.dtype)
        if weights is None:
            self.s += xc.sum(0, dtype=torch.float64)
            self.m += torch.einsum("ngd,nge->gde", xc, xc).double()
            self.w += x.shape[0]
        else:
            wt = weights.to(xc.device, self.dtype).reshape(-1, 1, 1)
            self.s += (wt * xc).sum(0, dtype=torch.float64)
            self.m += torch.einsum("ngd,nge->gde", wt * xc, xc).double()
            self.w += float(weights.double().sum())
        self.n += x.shape[0]

    def mean(self) -> torch.Tensor:
        return self.shift + self.s / self.w

    def cov(self, unbiased: bool = True) -> torch.Tensor:
        """[G, d, d]; N − 1 denominator when ``unbiased`` (unweighted), else the weighted
        population covariance Σ w(x − μ)(x − μ)ᵀ / Σ w."""
        if self.n < 2:
            raise InputError(f"A covariance needs at least 2 points (got {self.n}).")
        ds = self.s / self.w
        centred = self.m - self.w * ds[:, :, None] * ds[:, None, :]
        return centred / ((self.w - 1) if unbiased else self.w)

    def second_moment(self) -> torch.Tensor:
        """Σ w x xᵀ (uncentred), [G, d, d]."""
        k, s = self.shift, self.s
        return self.m + k[:, :, None] * s[:, None, :] + s[:, :, None] * k[:, None, :] + self.w * k[:, :, None] * k[:, None, :]
