"""Streaming isotropy statistics of many clouds in one forward pass.

Streaming (:class:`CloudStats`): the analysis never holds a layer's activation cloud. Inside
the hook each padded batch is folded into a per-layer sum and sum of outer products (shifted
by the first batch's mean, to avoid cancellation with the huge means of residual streams):
x − K is written into a scratch buffer reused by every hook (padding zeroed, nothing copied
out), then ONE float32 GEMM per cloud (the upper block triangle of the symmetric product)
is added to a float64 sum kept as its packed upper triangle, O(d²/2) per layer;
``cov_dtype="float64"`` makes the products exact. The per-sequence sums of unit vectors
(self-similarity) are one batched product with the inverse norms. Average cosine, the
partition score's Z(u) and the 2-D PCA are computed on a seeded sample of ``n_sample`` tokens
per layer (the same tokens at every layer), kept exactly in the model's dtype on the host.
The hooks never wait for the device: the per-batch indices come from the lengths known on the
host, the sampled tokens are one ``index_select`` (from a GPU, a non-blocking copy into
pinned memory) and the self-similarity sums stay on the device until the pass is over.
Memory: (L + 2)·d(d + 1)/2 float64 sums + 2(L + 1)·n_sample·d floats (residual and
head-output samples), whatever the number of tokens, allocated before the pass. The fixed cost is one eigvalsh and one eigh of d × d per depth and batched
d_head × d_head ones per layer of heads, on the model's device unless ``linalg_device`` says otherwise.

Per-head outputs: a head's output is z_h W_O^h, a linear map of its d_head-dim z, so the
analysis accumulates z's statistics (d_head² per head) and maps them exactly:
C_out = W_O^hᵀ C_z W_O^h, mean_out = μ_z W_O^h, cos between outputs through W_O^h W_O^hᵀ.
A head's output spans at most d_head dimensions of d_model, so its IsoScore is at most
(d_head − 1)/(d_model − 1); ``isoscore_z`` (in the head's own z space) is reported beside it.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from mechscope.analyses.isotropy.scores import (
    _outlier_ratios,
    isoscore_from_eigenvalues,
    pair_cosines,
    random_pairs,
    star_from_eigenvalues,
)
from mechscope.probes import hooknames
from mechscope.probes.covariance import CloudStats, Workspace, packed_size
from mechscope.probes.errors import InputError
from mechscope.probes.tokens import str_tokens


def _unit_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ over real positions of x/||x||: x [B, T, ..., d], mask [B, T] → [B, ..., d]."""
    xh = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    m = mask.reshape(mask.shape + (1,) * (x.ndim - 2)).to(xh.dtype)
    return (xh * m).sum(1)


def sample_slots(lengths: Sequence[int], n_sample: int, seed: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """A seeded sample of min(n_sample, total) token positions: {text index: (positions, slots)}."""
    total = int(sum(lengths))
    g = torch.Generator().manual_seed(int(seed))
    pick = torch.randperm(total, generator=g)[: min(n_sample, total)].sort().values
    offsets = np.cumsum([0] + list(lengths))
    out: dict[int, tuple[list, list]] = {}
    for slot, flat in enumerate(pick.tolist()):
        i = int(np.searchsorted(offsets, flat, side="right") - 1)
        out.setdefault(i, ([], []))
        out[i][0].append(flat - int(offsets[i]))
        out[i][1].append(slot)
    return {i: (torch.tensor(p), torch.tensor(s)) for i, (p, s) in out.items()}


class _BatchPlan:
    """Per-batch indices shared by every site of one pass, worked out once per batch on the
    host from the lengths (no device sync): the number of real positions, the flat indices
    b·T + t of the sampled tokens, the rows of the sample buffers they go to, T(T − 1) per
    sequence. Sampled tokens are stored in the order the batches come (each batch's picks a
    contiguous block of rows, written by one ``index_select``) and put back in slot order
    when a cloud is scored (``slot_of_row``)."""

    def __init__(self, n_seq: int, n_sample: int, picks):
        self.picks = picks
        self.pairs = torch.zeros(n_seq, dtype=torch.float64)  # T(T − 1) per sequence
        self.slot_of_row = torch.full((n_sample,), -1, dtype=torch.long)
        self.filled = 0
        self._batch = None
        self._order = None

    def for_batch(self, batch, device) -> "_BatchPlan":
        if batch is self._batch:
            return self
        lens = batch.lengths_list()
        t = int(batch.tokens.shape[1])
        src, slots = [], []
        for row, (i, n) in enumerate(zip(batch.index, lens)):
            self.pairs[i] = float(n * (n - 1))
            if i in self.picks:
                pos, sl = self.picks[i]
                src.append(pos + row * t)
                slots.append(sl)
        self.lens, self.t, self.n_real = lens, t, sum(lens)
        k = sum(len(sl) for sl in slots)
        self.rows = slice(self.filled, self.filled + k)
        if k:
            self.slot_of_row[self.rows] = torch.cat(slots)
            self.src = torch.cat(src).to(device)
        self.filled += k
        self.k = k
        self.index = torch.tensor(batch.index, device=device)
        self._real_index, self._device, self._batch, self._order = None, device, batch, None
        return self

    @property
    def real_index(self) -> torch.Tensor:
        """Flat indices b·T + t of the real positions, in order (the first batch's shift)."""
        if self._real_index is None:
            idx = [torch.arange(n) + row * self.t for row, n in enumerate(self.lens)]
            self._real_index = torch.cat(idx).to(self._device)
        return self._real_index

    def order(self) -> torch.Tensor:
        """Buffer row of each slot (slot order from batch order)."""
        if self._order is None:
            if self.filled != self.slot_of_row.numel():
                raise RuntimeError(f"{self.filled} of {self.slot_of_row.numel()} sampled tokens were seen.")
            self._order = torch.argsort(self.slot_of_row)
        return self._order


class _SiteState:
    """Streaming state of one hook site: G clouds of dimension d (O(G·d²) + the token sample).

    Per hook call, with no host sync: the covariance sums (one GEMM per cloud folded into
    packed float64 sums, :meth:`CloudStats.add_padded`), the per-sequence sum of unit
    vectors (one batched product with the inverse norms; the mean cosines stay on the
    model's device) and the sampled tokens' vectors (one ``index_select`` into the host
    buffer; from a GPU a non-blocking copy into pinned memory). Temporaries live in the shared
    :class:`Workspace`; the per-batch indices in the shared :class:`_BatchPlan`."""

    def __init__(self, n_seq: int, n_sample: int, dtype: torch.dtype, gram: torch.Tensor | None = None,
                 ws: Workspace | None = None, plan: _BatchPlan | None = None, bufs: dict | None = None):
        """``bufs``: preallocated views (see :class:`_preallocate`): "sums" [G, d(d + 1)/2],
        "s" and "shift" [G, d], "selfsim" [n_seq, G] (float64, the model's device), "sample"
        [S, G, d] (the model's dtype, host) and "gram_x" [G, d, d] (the model's dtype and
        device) for head outputs; whatever is missing is made on the first batch. ``plan``:
        shared by the sites of one pass (one of its own otherwise)."""
        bufs = bufs or {}
        self.stats = CloudStats(dtype, m=bufs.get("sums"), packed=True, s=bufs.get("s"), shift=bufs.get("shift"))
        self.selfsim = None  # [n_seq, G] mean within-sequence cosine, on the activations' device
        self._selfsim_buf = bufs.get("selfsim")
        self.n_seq, self.n_sample = n_seq, n_sample
        self._buf = bufs.get("sample")  # [S, G, d] in the activations' dtype, rows in batch order
        self.gram = gram  # [G, d, d]: cosines measured through W W^T (head outputs) if given
        self._gram_x = None  # gram in the activations' dtype and device
        if gram is not None and bufs.get("gram_x") is not None:
            self._gram_x = bufs["gram_x"].copy_(gram)
        self.ws = ws or Workspace()
        self.plan = plan
        self._pending = False  # a non-blocking copy into self._buf may be in flight

    def reserve(self, n: int, g: int, d: int, dtype: torch.dtype, device) -> None:
        """Make the scratch buffers for batches of up to n positions before the pass."""
        self.stats.reserve(self.ws, n, g, d, device)
        if self.gram is not None:
            self.ws.get("gram_xg", (g, n, d), dtype, device)

    @property
    def pairs(self) -> torch.Tensor:
        return self.plan.pairs

    def add(self, x: torch.Tensor, batch, picks) -> None:
        """x [B, T, G, d] (padded); fold the batch in."""
        x = x.detach()
        b, t, g, d = x.shape
        if self.plan is None:
            self.plan = _BatchPlan(self.n_seq, self.n_sample, picks)
        plan = self.plan.for_batch(batch, x.device)
        mask = batch.mask
        self.stats.add_padded(x, mask, self.ws, n_real=plan.n_real,
                              real_index=plan.real_index if self.stats.shift is None else None)
        if self.selfsim is None:
            buf = self._selfsim_buf
            if buf is not None and buf.shape == (self.n_seq, g) and buf.device == x.device:
                self.selfsim = buf.fill_(float("nan"))
            else:
                self.selfsim = torch.full((self.n_seq, g), float("nan"), dtype=torch.float64, device=x.device)
            if self._buf is None or self._buf.shape != (self.n_sample, g, d) or self._buf.dtype != x.dtype:
                self._buf = torch.zeros(self.n_sample, g, d, dtype=x.dtype,  # the model's dtype, on the host
                                        pin_memory=x.device.type == "cuda")
        # unit-vector sums in the activations' dtype (float32: ~1e-7 relative on a sum of at
        # most n_ctx unit vectors), the per-sequence mean cosine in float64
        flat = x.reshape(b * t, g, d)
        if self.gram is None:
            norms = torch.linalg.vector_norm(x, dim=-1)  # [B, T, G]
        else:  # cosines of x W: ||xW||² = x (W Wᵀ) xᵀ
            if self._gram_x is None:
                self._gram_x = self.gram.to(x.device, x.dtype)
            gram = self._gram_x
            xg = self.ws.get("gram_xg", (g, b * t, d), x.dtype, x.device)
            fg = flat.permute(1, 0, 2)  # [G, n, d]
            torch.bmm(fg, gram, out=xg)
            norms = xg.mul_(fg).sum(-1).clamp_min(0).sqrt().T.reshape(b, t, g)
        inv = mask[:, :, None].to(x.dtype) / norms.clamp_min(1e-30)  # [B, T, G], 0 on padding
        # Σ_t x̂_t per sequence and cloud: [B, G, T] @ [B, T, G·d], the diagonal blocks
        s = torch.bmm(inv.transpose(1, 2), x.reshape(b, t, g * d)).view(b, g, g, d)
        s = s.diagonal(dim1=1, dim2=2).permute(0, 2, 1)  # [B, G, d]
        if self.gram is None:
            ss = (s * s).sum(-1).double()
        else:
            ss = (torch.einsum("bgd,gde->bge", s, gram) * s).sum(-1).double()
        tl = batch.lengths.to(ss.device).double()[:, None]
        self.selfsim.index_copy_(0, plan.index, (ss - tl) / (tl * (tl - 1)))
        if plan.k:
            dst = self._buf[plan.rows]  # contiguous rows of the host buffer
            if dst.device == x.device:
                torch.index_select(flat, 0, plan.src, out=dst)
            else:
                dst.copy_(flat.index_select(0, plan.src), non_blocking=True)
                self._pending = True

    def _wait(self) -> None:
        if self._pending:
            torch.cuda.synchronize()
            self._pending = False

    @property
    def sample(self) -> torch.Tensor:
        """The sampled tokens [S, G, d] in slot order (a new tensor, the activations' dtype)."""
        self._wait()
        return self._buf.index_select(0, self.plan.order())

    def pooled_selfsim(self, g: int = 0) -> float:
        """Σ over sequences of Σ_{i≠j} cos / Σ T(T − 1) (the reference's pooling)."""
        w = self.pairs
        return float((self.selfsim[:, g].cpu() * w).sum() / w.sum())


def _partitions(sample: torch.Tensor, vecs: torch.Tensor, null_dims: bool = False) -> torch.Tensor:
    """Partition scores of G clouds at once: samples [G, S, n], eigenvectors [G, n, n]
    (columns). ``null_dims``: XᵀX also has eigenvectors orthogonal to every point, where
    Z(u) = N."""
    proj = torch.bmm(sample, vecs)  # [G, S, n]: uᵀx for every point and eigenvector
    log_z = torch.cat([torch.logsumexp(proj, 1), torch.logsumexp(-proj, 1)], 1)  # [G, 2n]
    if null_dims:
        log_z = torch.cat([log_z, torch.full_like(log_z[:, :1], math.log(sample.shape[1]))], 1)
    return torch.exp(log_z.min(1).values - log_z.max(1).values)


def _sym(m: torch.Tensor) -> torch.Tensor:
    return (m + m.transpose(-1, -2)) / 2


def _rows(evals, var, mean, part_vecs, sample, selfsims, params, pairs, null_dims: bool = False) -> list[dict]:
    """Every score of G clouds at once: covariance eigenvalues [G, n] (all n of them),
    per-dimension variance and mean [G, d], the eigenvectors of XᵀX [G, m, m], a sample of
    the points in those coordinates [S, G, m], the pooled self-similarities (G floats) and
    the seeded pairs for the average cosine."""
    var_np, mu_np = var.cpu().numpy(), np.abs(mean.cpu().numpy())
    if not (np.isfinite(var_np).all() and np.isfinite(mu_np).all()):
        raise InputError("The variances or means contain NaN or infinite values.")
    vr, mr = _outlier_ratios(var_np, mu_np)
    by_var, by_mean = vr > params.outlier_multiple, mr > params.outlier_multiple
    cos = pair_cosines(sample, *pairs)
    part = _partitions(sample.transpose(0, 1), part_vecs, null_dims).cpu()
    rows = []
    for g in range(evals.shape[0]):
        rows.append({
            "isoscore": isoscore_from_eigenvalues(evals[g]),
            "isoscore_star": star_from_eigenvalues(evals[g], params.zeta, params.c0),
            "avg_cosine": float(cos[g]),
            "partition": float(part[g]),
            "self_similarity": selfsims[g],
            "isotropy_su": 1 - selfsims[g],
            "n_outlier_var": int(by_var[g].sum()),
            "n_outlier_mean": int(by_mean[g].sum()),
            "outlier_dims": ",".join(map(str, np.flatnonzero(by_var[g] | by_mean[g]).tolist()[:32])),
        })
    return rows


def top_eigenvectors(cov: torch.Tensor, k: int = 2, tol: float = 1e-6, max_iters: int = 200,
                     seed: int = 0) -> torch.Tensor:
    """The top-k eigenvectors of a symmetric PSD matrix [d, k] (columns, descending), by
    subspace iteration on 4k vectors with a Rayleigh–Ritz step, stopped when the top k
    residuals ||C v − λv|| fall below ``tol`` × λ_max: O(d²k) per iteration instead of a full
    O(d³) decomposition (a few iterations when the spectrum is dominated by a few
    directions, as in residual streams). Used only to draw the 2-D PCA."""
    d = cov.shape[0]
    m = min(d, 4 * k)
    g = torch.Generator().manual_seed(seed)
    v = torch.linalg.qr(torch.randn(d, m, generator=g, dtype=cov.dtype).to(cov.device)).Q
    for _ in range(max_iters):
        cv = cov @ v
        evals, w = torch.linalg.eigh(v.T @ cv)  # Rayleigh–Ritz on span(v), ascending
        top = w[:, -k:]
        res = torch.linalg.vector_norm(cv @ top - (v @ top) * evals[-k:], dim=0)
        if bool((res <= tol * evals[-1].abs().clamp_min(1e-300)).all()):
            break
        v = torch.linalg.qr(cv).Q
    return (v @ w)[:, torch.argsort(evals, descending=True)[:k]]


def _full_cloud(cov, mean, second, sample, selfsim, params, pairs=None, with_pvecs: bool = False):
    """Scores of a cloud whose covariance is held in full: one eigvalsh of C (IsoScore,
    IsoScore*, the spectrum), one eigh of XᵀX (partition score), the top-2 principal axes by
    subspace iteration (for the PCA drawing). Everything runs on ``cov``'s device.
    ``with_pvecs``: also return the eigenvectors of XᵀX."""
    evals = torch.linalg.eigvalsh(_sym(cov))  # ascending
    _, pvecs = torch.linalg.eigh(_sym(second))
    if pairs is None:
        pairs = random_pairs(sample.shape[0], params.n_pairs, params.seed)
    row = _rows(evals[None], torch.diagonal(cov)[None], mean[None], pvecs[None], sample[:, None], [selfsim],
                params, pairs)[0]
    out = (row, evals.flip(0), top_eigenvectors(cov))
    return out + (pvecs,) if with_pvecs else out


def _head_rows(st: "_SiteState", w_o: torch.Tensor, layer: int, params, pairs, device="cpu") -> list[dict]:
    """Scores of one layer's head outputs x = z W (W = W_O^h [d_head, d_model]) from z's
    statistics, all heads at once. With Wᵀ = Q R (Q orthonormal, R the Cholesky factor of
    W Wᵀ = Rᵀ R), x = (z Rᵀ) Qᵀ: the outputs ARE the points y = z Rᵀ in the orthonormal basis
    Q of the head's span, so covariance, cosines and the eigenvectors of XᵀX carry over;
    the other d_model − r eigenvalues are 0 (and Z(u) = N on those directions). The linear
    algebra runs on ``device`` (float64)."""
    w = w_o.double().to(device)  # [H, d_head, d_model]
    h, dh, d = w.shape
    stats = st.stats.to(device, full=True)
    cov_z, mean_z, sec_z = stats.cov(), stats.mean(), stats.second_moment()
    r, info = torch.linalg.cholesky_ex(st.gram.to(w.device), upper=True)  # W Wᵀ = Rᵀ R, [H, dh, dh]
    for k in torch.nonzero(info).reshape(-1).tolist():  # W_O^h rank-deficient: its row space's basis
        r[k] = torch.linalg.qr(w[k].T).R
    cov_y = _sym(r @ cov_z @ r.transpose(1, 2))
    sec_y = _sym(r @ sec_z @ r.transpose(1, 2))
    ev_y = torch.linalg.eigvalsh(cov_y)  # [H, dh]
    evals = torch.cat([ev_y, ev_y.new_zeros(h, d - dh)], 1)
    _, pv = torch.linalg.eigh(sec_y)
    sample = torch.einsum("shd,hed->she", st.sample.double().to(w.device), r)  # y = z Rᵀ, [S, H, dh]
    var = ((cov_z @ w) * w).sum(1)  # diag(Wᵀ C_z W), [H, d_model]
    mean = torch.einsum("hd,hde->he", mean_z, w)
    rows = _rows(evals, var, mean, pv, sample, [st.pooled_selfsim(k) for k in range(h)], params, pairs,
                 null_dims=d > dh)
    ev_z = torch.linalg.eigvalsh(_sym(cov_z))
    site = hooknames.name("z", layer)
    return [{"cloud": "head", "depth": layer + 1, "layer": layer, "head": k, "site": site, "n_points": st.stats.n,
             **row, "isoscore_z": isoscore_from_eigenvalues(ev_z[k])} for k, row in enumerate(rows)]


class _preallocate:
    """The long-lived state of every cloud group in a few allocations made before the forward
    pass (not interleaved with the activations: long-lived tensors made during the first batch
    sit between the activations and keep the heap from shrinking, which cost more than the
    state itself). A float64 block on the model's device holds, per group, the packed sums
    [G, d(d + 1)/2], s and shift [G, d] and the self-similarities [n_seq, G]; a block in the
    model's dtype on the host (pinned when the model is on a GPU, for non-blocking copies)
    holds the token samples [S, G, d]; head groups get W Wᵀ in the model's dtype on the
    device. ``n_resid`` groups of (1, d) then the given (G, d) groups; ``bufs(i)`` gives
    group i's views."""

    def __init__(self, n_resid: int, kinds: list[tuple[int, int]], n_s: int, n_seq: int, device, dtype):
        self.shapes = [kinds[0]] * n_resid + kinds[1:]
        self.n_s, self.n_seq = n_s, n_seq
        f64 = [g * packed_size(d) + 2 * g * d + n_seq * g for g, d in self.shapes]
        grams = [g * d * d if i >= n_resid else 0 for i, (g, d) in enumerate(self.shapes)]
        smp = [n_s * g * d for g, d in self.shapes]
        self._f64 = torch.zeros(sum(f64), dtype=torch.float64, device=device)
        self._gram = torch.zeros(sum(grams), dtype=dtype, device=device)
        self._smp = torch.zeros(sum(smp), dtype=dtype, pin_memory=torch.device(device).type == "cuda")
        self._o = [np.cumsum([0] + v).tolist() for v in (f64, grams, smp)]

    def bufs(self, i: int) -> dict:
        g, d = self.shapes[i]
        o, og, os_ = (x[i] for x in self._o)
        out = {}
        for name, shape in (("sums", (g, packed_size(d))), ("s", (g, d)), ("shift", (g, d)), ("selfsim", (self.n_seq, g))):
            n = shape[0] * shape[1]
            out[name] = self._f64[o : o + n].view(shape)
            o += n
        out["sample"] = self._smp[os_ : os_ + self.n_s * g * d].view(self.n_s, g, d)
        if self._o[1][i + 1] > og:
            out["gram_x"] = self._gram[og : og + g * d * d].view(g, d, d)
        return out


def _sample_labels(model, seqs, picks, n_s):
    from mechscope.probes.lexical import surface_class

    tok = np.empty(n_s, dtype=object)
    cls = np.empty(n_s, dtype=object)
    for i, (pos, slots) in picks.items():
        ids = [seqs[i][p] for p in pos.tolist()]
        strs = str_tokens(model, ids) if model.tokenizer is not None else [str(t) for t in ids]
        for p, sl, s in zip(pos.tolist(), slots.tolist(), strs):
            tok[sl] = s
            cls[sl] = "first token" if p == 0 else surface_class(s)
    return tok, cls
