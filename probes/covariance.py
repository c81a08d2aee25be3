"""Streamed mean and covariance of point clouds (O(d²) per cloud), reduced inside hooks.

:class:`CloudStats` folds batches of points into a shifted sum and sum of outer products,
optionally weighted; the sums are float64, each batch's product is one GEMM in ``dtype``.
:meth:`CloudStats.add_padded` folds a right-padded [B, T, G, d] batch straight from a hook:
padded positions are zeroed in a reused scratch buffer (:class:`Workspace`) instead of
being copied out, so a hook call allocates nothing that scales with the batch. Used by the
isotropy analyses and by whitening.

``packed=True`` keeps each cloud's sum of outer products as its packed upper triangle
(d(d + 1)/2 float64 numbers instead of d², :func:`pack`/:func:`unpack`): half the memory of
the long-lived state; each batch's product is symmetrised while it is folded in, and the full
matrix exists only while one cloud's covariance is being read.
"""

from __future__ import annotations

import functools

import torch

from mechscope.probes.errors import InputError


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

    def clear(self) -> None:
        """Drop every buffer (after the pass: the scratch is not needed while scoring)."""
        self._bufs.clear()


@functools.lru_cache(maxsize=32)
def _triu_flat(d: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices into a row-major d × d matrix of its upper triangle (i ≤ j, row by row)
    and of the mirrored entries (j, i), as long tensors on ``device``."""
    i, j = torch.triu_indices(d, d, device=device)
    return i * d + j, j * d + i


def packed_size(d: int) -> int:
    return d * (d + 1) // 2


def pack(m: torch.Tensor) -> torch.Tensor:
    """The upper triangle (i ≤ j, row by row) of symmetric matrices [..., d, d] → [..., d(d + 1)/2]."""
    d = m.shape[-1]
    up, _ = _triu_flat(d, str(m.device))
    return m.reshape(m.shape[:-2] + (d * d,)).index_select(-1, up)


def unpack(p: torch.Tensor, d: int) -> torch.Tensor:
    """The symmetric matrices [..., d, d] whose packed upper triangles are p [..., d(d + 1)/2]."""
    up, lo = _triu_flat(d, str(p.device))
    out = p.new_empty(p.shape[:-1] + (d * d,))
    out[..., up] = p
    out[..., lo] = p
    return out.view(p.shape[:-1] + (d, d))


def _fold_packed(m: torch.Tensor, prod: torch.Tensor, ws: "Workspace") -> None:
    """m [G, P] float64 += the packed symmetric part (A + Aᵀ)/2 of prod [G, d, d], formed in
    float64 (the same sum as symmetrising the accumulated full matrix, to float64 rounding)."""
    g, d, _ = prod.shape
    up, lo = _triu_flat(d, str(prod.device))
    flat = prod.reshape(g, d * d)
    a = ws.get("pk_up", (g, up.numel()), prod.dtype, prod.device)
    b = ws.get("pk_lo", (g, up.numel()), prod.dtype, prod.device)
    torch.index_select(flat, 1, up, out=a)
    torch.index_select(flat, 1, lo, out=b)
    if prod.dtype == torch.float64:
        m.add_(a.add_(b), alpha=0.5)
    else:  # (a + b)/2 in float64 without a float64 copy of each: m += a/2, then += b/2 (exact halvings)
        m.add_(a, alpha=0.5)
        m.add_(b, alpha=0.5)


_SPLIT_MIN = 256  # from this dimension on, XᵀX is formed as 3 blocks instead of 4


def _add_gram_blocks(m: torch.Tensor, x: torch.Tensor, ws: Workspace, assign: bool = False) -> None:
    """m += xᵀx for x [n, d] (``assign``: m = xᵀx), computing only the upper block triangle
    of the symmetric product (x = [x1 x2]: x1ᵀx1, x1ᵀx2, x2ᵀx2; the lower block is the
    transpose): 3/4 of the GEMM's multiply-adds."""
    h = x.shape[1] // 2
    x1, x2 = x[:, :h], x[:, h:]
    for name, a, bb, rows, cols in (("g11", x1, x1, slice(0, h), slice(0, h)),
                                    ("g12", x1, x2, slice(0, h), slice(h, None)),
                                    ("g22", x2, x2, slice(h, None), slice(h, None))):
        out = ws.get(name, (a.shape[1], bb.shape[1]), x.dtype, x.device)
        torch.mm(a.T, bb, out=out)
        if assign:
            m[rows, cols] = out
            if name == "g12":
                m[cols, rows] = out.T
        else:
            m[rows, cols] += out
            if name == "g12":
                m[cols, rows] += out.T


class CloudStats:
    """Running (weighted) mean and covariance of G clouds at once (points arrive as [m, G, d]).

    Sums are taken around a shift K (the first batch's mean), in float64:
    s = Σ w(x − K), M = Σ w(x − K)(x − K)ᵀ, W = Σ w. The shift avoids the cancellation that
    ruins E[xxᵀ] − μμᵀ when the mean is large (residual streams). ``dtype`` is the dtype of
    each batch's product (float32: fast, ~1e-7 relative per batch; float64: exact).
    ``packed``: M is kept as [G, d(d + 1)/2] (the upper triangles, see :func:`pack`)."""

    def __init__(self, dtype: torch.dtype = torch.float32, m: torch.Tensor | None = None, packed: bool = False,
                 s: torch.Tensor | None = None, shift: torch.Tensor | None = None):
        """``m``: a preallocated float64 block for the sum of outer products, [G, d, d] (or
        [G, d(d + 1)/2] when ``packed``), and ``s``, ``shift`` [G, d] float64 ones, made before
        the forward pass so the long-lived sums do not fragment the heap between the
        activations (made on the first batch otherwise)."""
        self.dtype = dtype
        self.packed = packed
        self.n = 0  # points seen
        self.w = 0.0  # total weight (= n when unweighted)
        self.shift = self.s = None
        self.m = m
        self._bufs = (s, shift)

    def _m_shape(self, g: int, d: int) -> tuple[int, ...]:
        return (g, packed_size(d)) if self.packed else (g, d, d)

    def _start(self, real: torch.Tensor) -> None:
        """Shift and zero sums from the first batch's real points [m, G, d]."""
        shift = real.detach().double().mean(0).to(self.dtype).double()  # [G, d], exact in dtype
        g, d = shift.shape
        s_buf, k_buf = getattr(self, "_bufs", (None, None))
        if s_buf is not None and k_buf is not None and s_buf.shape == k_buf.shape == (g, d):
            self.shift, self.s = k_buf.copy_(shift), s_buf.zero_()
        else:
            self.shift, self.s = shift, torch.zeros(g, d, dtype=torch.float64, device=real.device)
        shape = self._m_shape(g, d)
        if self.m is None:
            self.m = torch.zeros(shape, dtype=torch.float64, device=real.device)
        elif tuple(self.m.shape) != shape or self.m.dtype != torch.float64:
            raise InputError(f"The preallocated sums are {tuple(self.m.shape)}, the points need {shape} float64.")
        else:
            self.m.zero_()

    def _fold(self, prod: torch.Tensor, ws: Workspace | None = None) -> None:
        """M += one batch's products prod [G, d, d] (in ``dtype``)."""
        if self.packed:
            _fold_packed(self.m, prod, ws or Workspace())
        else:
            self.m += prod.double()

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
            self._fold(torch.einsum("ngd,nge->gde", xc, xc))
            self.w += x.shape[0]
        else:
            wt = weights.to(xc.device, self.dtype).reshape(-1, 1, 1)
            self.s += (wt * xc).sum(0, dtype=torch.float64)
            self._fold(torch.einsum("ngd,nge->gde", wt * xc, xc))
            self.w += float(weights.double().sum())
        self.n += x.shape[0]

    def add_padded(self, x: torch.Tensor, mask: torch.Tensor, ws: Workspace | None = None, n_real: int | None = None,
                   real_index: torch.Tensor | None = None) -> None:
        """Fold the real positions of a right-padded batch x [B, T, G, d] (``mask`` [B, T],
        True on real tokens): x − K goes into a scratch buffer with padded rows zeroed, then
        ONE GEMM per cloud (bmm over G) gives the batch's Σ(x − K)(x − K)ᵀ, added to the
        float64 sum. The batch's Σ(x − K) is summed in ``dtype`` (≤ B·T terms) first.

        ``n_real`` (the number of real positions) and ``real_index`` (their flat indices
        b·T + t, in order, on x's device) are read from the device when not given: pass them
        (known on the host from the lengths) to keep a GPU hook free of syncs."""
        ws = ws or Workspace()
        b, t, g, d = x.shape
        if n_real is None:
            n_real = int(mask.sum())
        if n_real == 0:
            return
        if self.shift is None:
            self._start(x[mask] if real_index is None else x.reshape(b * t, g, d).index_select(0, real_index))
        xc = ws.get("cov_xc", (b * t, g, d), self.dtype, x.device)
        torch.sub(x.detach().reshape(b * t, g, d).to(self.dtype), self.shift.to(self.dtype), out=xc)
        if n_real < b * t:
            xc.mul_(mask.reshape(b * t, 1, 1).to(self.dtype))
        if g == 1 and d >= _SPLIT_MIN:
            if self.packed:
                full = ws.get("cov_full", (1, d, d), self.dtype, x.device)
                _add_gram_blocks(full[0], xc.view(b * t, d), ws, assign=True)
                _fold_packed(self.m, full, ws)
            else:
                _add_gram_blocks(self.m[0], xc.view(b * t, d), ws)
        else:
            prod = ws.get("cov_prod", (g, d, d), self.dtype, x.device)
            xg = xc.permute(1, 0, 2)  # [G, n, d]
            torch.bmm(xg.transpose(1, 2), xg, out=prod)
            self._fold(prod, ws)
        self.s += xc.sum(0)
        self.w += n_real
        self.n += n_real

    def reserve(self, ws: Workspace, n: int, g: int, d: int, device) -> None:
        """Make the scratch buffers :meth:`add_padded` needs for batches of up to n positions
        of G clouds of dimension d (before the forward pass: long-lived buffers made during
        it sit between the activations and keep the heap from shrinking)."""
        ws.get("cov_xc", (n, g, d), self.dtype, device)
        if g == 1 and d >= _SPLIT_MIN:
            h = d // 2
            for name, shape in (("g11", (h, h)), ("g12", (h, d - h)), ("g22", (d - h, d - h))):
                ws.get(name, shape, self.dtype, device)
            if self.packed:
                ws.get("cov_full", (1, d, d), self.dtype, device)
        else:
            ws.get("cov_prod", (g, d, d), self.dtype, device)
        if self.packed:
            for name in ("pk_up", "pk_lo"):
                ws.get(name, (g, packed_size(d)), self.dtype, device)

    def full_m(self) -> torch.Tensor:
        """M = Σ w(x − K)(x − K)ᵀ as full [G, d, d] matrices (unpacked when ``packed``)."""
        return unpack(self.m, self.s.shape[-1]) if self.packed else self.m

    def to(self, device, full: bool = False) -> "CloudStats":
        """The same statistics on ``device`` (a new object; this one is left as it is);
        ``full``: with M as full matrices (unpacked once, for reading several results)."""
        out = CloudStats(self.dtype, packed=self.packed and not full)
        out.n, out.w = self.n, self.w
        if self.shift is not None:
            m = self.m.to(device)
            out.shift, out.s = self.shift.to(device), self.s.to(device)
            out.m = unpack(m, self.s.shape[-1]) if self.packed and full else m
        return out

    def mean(self) -> torch.Tensor:
        return self.shift + self.s / self.w

    def cov(self, unbiased: bool = True) -> torch.Tensor:
        """[G, d, d]; N − 1 denominator when ``unbiased`` (unweighted), else the weighted
        population covariance Σ w(x − μ)(x − μ)ᵀ / Σ w."""
        if self.n < 2:
            raise InputError(f"A covariance needs at least 2 points (got {self.n}).")
        ds = self.s / self.w
        centred = self.full_m() - self.w * ds[:, :, None] * ds[:, None, :]
        return centred / ((self.w - 1) if unbiased else self.w)

    def second_moment(self) -> torch.Tensor:
        """Σ w x xᵀ (uncentred), [G, d, d]."""
        k, s = self.shift, self.s
        return self.full_m() + k[:, :, None] * s[:, None, :] + s[:, :, None] * k[:, None, :] + self.w * k[:, :, None] * k[:, None, :]
