"""Streamed mean and covariance of point clouds (O(d²) per cloud), reduced inside hooks.

:class:`CloudStats` folds batches of points into a shifted sum and sum of outer products,
optionally weighted; the sums are float64, each batch's product is one GEMM in ``dtype``.
:meth:`CloudStats.add_padded` folds a right-padded [B, T, G, d] batch straight from a hook:
padded positions are zeroed in a reused scratch buffer (:class:`Workspace`) instead of
being copied out, so a hook call allocates nothing that scales with the batch. Used by the
isotropy analyses and by whitening.
"""

from __future__ import annotations

import torch

from probes.errors import InputError


class Workspace:
    """Scratch buffers reused across hook calls (one per name, grown when too small), so
    per-batch temporaries do not fragment the heap: ``ws.get("xc", (n, d), dtype, device)``."""

    def __init__(self):
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
        n = 1
        for s in shape:
            n *= int(s)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != torch.device(device):
            buf = self._bufs[name] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n].view(shape)


_SPLIT_MIN = 256  # from this dimension on, XᵀX is formed as 3 blocks instead of 4


def _add_gram_blocks(m: torch.Tensor, x: torch.Tensor, ws: Workspace) -> None:
    """m += xᵀx for x [n, d], computing only the upper block triangle of the symmetric
    product (x = [x1 x2]: x1ᵀx1, x1ᵀx2, x2ᵀx2; the lower block is the transpose): 3/4 of
    the GEMM's multiply-adds."""
    h = x.shape[1] // 2
    x1, x2 = x[:, :h], x[:, h:]
    for name, a, bb, rows, cols in (("g11", x1, x1, slice(0, h), slice(0, h)),
                                    ("g12", x1, x2, slice(0, h), slice(h, None)),
                                    ("g22", x2, x2, slice(h, None), slice(h, None))):
        out = ws.get(name, (a.shape[1], bb.shape[1]), x.dtype, x.device)
        torch.mm(a.T, bb, out=out)
        m[rows, cols] += out
        if name == "g12":
            m[cols, rows] += out.T


class CloudStats:
    """Running (weighted) mean and covariance of G clouds at once (points arrive as [m, G, d]).

    Sums are taken around a shift K (the first batch's mean), in float64:
    s = Σ w(x − K), M = Σ w(x − K)(x − K)ᵀ, W = Σ w. The shift avoids the cancellation that
    ruins E[xxᵀ] − μμᵀ when the mean is large (residual streams). ``dtype`` is the dtype of
    each batch's product (float32: fast, ~1e-7 relative per batch; float64: exact)."""

    def __init__(self, dtype: torch.dtype = torch.float32, m: torch.Tensor | None = None):
        """``m``: a preallocated float64 [G, d, d] block for the sum of outer products (a view
        of one allocation shared by many clouds, made before the forward pass, keeps the
        long-lived sums from fragmenting the heap between the activations)."""
        self.dtype = dtype
        self.n = 0  # points seen
        self.w = 0.0  # total weight (= n when unweighted)
        self.shift = self.s = None
        self.m = m

    def _start(self, real: torch.Tensor) -> None:
        """Shift and zero sums from the first batch's real points [m, G, d]."""
        self.shift = real.detach().double().mean(0).to(self.dtype).double()  # [G, d], exact in dtype
        g, d = self.shift.shape
        self.s = torch.zeros(g, d, dtype=torch.float64, device=real.device)
        if self.m is None:
            self.m = torch.zeros(g, d, d, dtype=torch.float64, device=real.device)
        elif self.m.shape != (g, d, d) or self.m.dtype != torch.float64:
            raise InputError(f"The preallocated sums are {tuple(self.m.shape)}, the points need {(g, d, d)} float64.")
        else:
            self.m.zero_()

    def add(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        if x.ndim == 2:
            x = x[:, None, :]
        if x.shape[0] == 0:
            return
        if self.shift is None:
            self._start(x)
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

    def add_padded(self, x: torch.Tensor, mask: torch.Tensor, ws: Workspace | None = None) -> None:
        """Fold the real positions of a right-padded batch x [B, T, G, d] (``mask`` [B, T],
        True on real tokens): x − K goes into a scratch buffer with padded rows zeroed, then
        ONE GEMM per cloud (bmm over G) gives the batch's Σ(x − K)(x − K)ᵀ, added to the
        float64 sum. The batch's Σ(x − K) is summed in ``dtype`` (≤ B·T terms) first."""
        ws = ws or Workspace()
        b, t, g, d = x.shape
        n_real = int(mask.sum())
        if n_real == 0:
            return
        if self.shift is None:
            self._start(x[mask])
        xc = ws.get("cov_xc", (b * t, g, d), self.dtype, x.device)
        torch.sub(x.detach().reshape(b * t, g, d).to(self.dtype), self.shift.to(self.dtype), out=xc)
        if n_real < b * t:
            xc.mul_(mask.reshape(b * t, 1, 1).to(self.dtype))
        if g == 1 and d >= _SPLIT_MIN:
            _add_gram_blocks(self.m[0], xc.view(b * t, d), ws)
        else:
            prod = ws.get("cov_prod", (g, d, d), self.dtype, x.device)
            xg = xc.permute(1, 0, 2)  # [G, n, d]
            torch.bmm(xg.transpose(1, 2), xg, out=prod)
            self.m += prod
        self.s += xc.sum(0)
        self.w += n_real
        self.n += n_real

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
