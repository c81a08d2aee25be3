"""The streaming all-layer isotropy scorer (analyses.isotropy.isotropy) against direct,
non-streamed computations: packed covariance sums vs ``torch.cov``, every score of every
cloud vs the pure functions on the collected activations, and the same scores whatever the
batch size (padding, the order the batches come in and the sampled tokens' bookkeeping)."""

import numpy as np
import pytest
import torch

from mechscope.analyses import isotropy as iso
from mechscope.probes import capture, hooknames
from mechscope.probes.covariance import CloudStats, Workspace, pack, packed_size, unpack


@pytest.mark.parametrize("d", [3, 64, 257, 300])  # 257: odd, and ≥ 256 (the block-triangle GEMM); 300 even
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_packed_sums_equal_torch_cov_on_padded_batches(d, dtype):
    rng = np.random.default_rng(d)
    lengths = [[7, 3, 1], [5, 5, 2], [1, 1, 1], [9, 8, 4]]
    st, real, ws = CloudStats(dtype, packed=True), [], Workspace()
    for k, lens in enumerate(lengths):
        x = torch.tensor(rng.standard_normal((3, 9, 1, d)) * 0.5 + 300.0, dtype=torch.float32)
        mask = torch.arange(9)[None] < torch.tensor(lens)[:, None]
        x[~mask] = 1e4  # padding junk must not reach the sums
        if k % 2 == 0:  # the host-side counts a hook passes to stay free of device syncs
            idx = torch.nonzero(mask.reshape(-1)).reshape(-1)
            st.add_padded(x, mask, ws, n_real=int(mask.sum()), real_index=idx)
        else:
            st.add_padded(x, mask, ws)
        real.append(x[mask].double())
    pts = torch.cat(real)[:, 0]
    assert st.m.shape == (1, packed_size(d)) and st.n == pts.shape[0] == 47
    ref = torch.cov(pts.T)
    eps = torch.finfo(dtype).eps  # the per-batch product's rounding; float64 sums
    assert torch.allclose(st.cov()[0], ref, rtol=100 * eps, atol=100 * eps * float(ref.abs().max()))
    assert torch.equal(st.full_m()[0], st.full_m()[0].T)  # exactly symmetric: unpacked from one triangle
    centred = float((pts - pts.mean(0)).pow(2).sum(0).max())
    assert torch.allclose(st.second_moment()[0], pts.T @ pts, rtol=1e-12, atol=100 * eps * centred)
    assert torch.allclose(st.mean()[0], pts.mean(0), rtol=1e-12)


def test_pack_unpack_and_grouped_clouds():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 7, 7, generator=g, dtype=torch.float64)
    sym = a + a.transpose(1, 2)
    p = pack(sym)
    assert p.shape == (4, 28) and torch.equal(unpack(p, 7), sym)
    assert torch.equal(p[0, :7], sym[0, 0])  # row 0 of the upper triangle first
    # several clouds of one site (bmm path) through the packed fold, against torch.cov per cloud
    x = torch.randn(50, 3, 5, generator=g, dtype=torch.float64) + 10
    st = CloudStats(torch.float64, packed=True)
    for chunk in x.split(13):
        st.add_padded(chunk[None, :, :, :], torch.ones(1, chunk.shape[0], dtype=torch.bool))
    for k in range(3):
        assert torch.allclose(st.cov()[k], torch.cov(x[:, k].T), rtol=1e-12, atol=1e-13)


def _direct(model, seqs, n_sample, n_pairs, seed=0):
    """Every score of every residual depth and head output, straight from the captured
    activations (no streaming, no packing, no plan): {(cloud, depth or (layer, head)): dict}."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = [hooknames.name("resid_pre", 0)] + [hooknames.name("resid_post", l) for l in range(L)]
    zs = [hooknames.name("z", l) for l in range(L)]
    acts = capture.run(model, seqs, capture=names + zs, batch_size=len(seqs)).activations
    lengths = [len(s) for s in seqs]
    g = torch.Generator().manual_seed(seed)  # the sampled tokens: seeded flat positions, in text order
    pick = torch.randperm(sum(lengths), generator=g)[:n_sample].sort().values

    def scores(per_seq):
        cloud = torch.cat(per_seq).double()
        sample = cloud[pick]
        return {"isoscore": iso.isoscore(cloud), "isoscore_star": iso.isoscore_star(cloud, 0.2),
                "avg_cosine": iso.average_cosine(sample, n_pairs, seed=seed),
                "partition": iso.partition_score(sample, second_moment=cloud.T @ cloud),
                "self_similarity": iso.self_similarity(per_seq)}

    out = {("resid", depth): scores(acts[n]) for depth, n in enumerate(names)}
    with torch.no_grad():
        out[("resid", L + 1)] = scores([model.ln_final(a) for a in acts[names[-1]]])
    for l in range(L):
        w = model.W_O[l].detach().double()
        for h in range(H):
            out[("head", (l, h))] = scores([z[:, h].double() @ w[h] for z in acts[zs[l]]])
    return out


SEQS = [list(range(3 + i, 3 + i + n)) for i, n in enumerate([13, 4, 9, 2, 11, 7, 5, 12, 3, 8])]  # 74 tokens


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_all_layer_scores_equal_direct_computation_at_every_batch_size(dtype):
    from tests.tiny import tiny_model

    model = tiny_model(dtype=dtype)
    n_sample, n_pairs = 40, 500  # fewer sampled tokens than tokens: the picks fall in several batches
    ref = _direct(model, SEQS, n_sample, n_pairs)
    cov_dtype = "float64" if dtype == torch.float64 else "float32"
    eps = torch.finfo(dtype).eps
    # float64: products and forward exact to rounding; float32: the forward itself changes in the last
    # bits with the batch shape, and the unit-vector sums are float32
    tol = 1e6 * eps if dtype == torch.float64 else 2e3 * eps
    by_batch = {}
    for bs in (1, 3, 8):
        res = iso.isotropy(model, texts=tuple(map(tuple, SEQS)), n_sample=n_sample, n_pairs=n_pairs, batch_size=bs,
                           cov_dtype=cov_dtype, weights=False)
        assert res.n_tokens == 74
        got = {}
        for r in res.scores.itertuples():
            key = ("resid", r.depth) if r.cloud == "resid" else ("head", (r.layer, r.head))
            got[key] = {k: getattr(r, k) for k in ref[key]}
        assert set(got) == set(ref)
        for key, want in ref.items():
            for k, v in want.items():
                # the partition score is a ratio of sums of exp: relative; the others lie in [−1, 1]
                assert got[key][k] == pytest.approx(v, rel=tol if k == "partition" else 0, abs=0 if k == "partition" else tol), (bs, key, k)
        by_batch[bs] = (res.scores, res.pca)
    for bs in (3, 8):  # the same scores and the same sampled tokens, whatever the batching
        a, b = by_batch[1][0], by_batch[bs][0]
        for c in ("isoscore", "isoscore_star", "avg_cosine", "self_similarity"):
            assert np.allclose(a[c], b[c], rtol=tol, atol=tol), (bs, c)
        assert np.allclose(a["partition"], b["partition"], rtol=tol, atol=0)
        # PCA coordinates: the same tokens on the same axes (up to each axis's sign)
        pa, pb = by_batch[1][1].astype(np.float64), by_batch[bs][1].astype(np.float64)
        sign = np.sign((pa * pb).sum(1, keepdims=True))
        assert np.allclose(pa, sign * pb, rtol=1e-3, atol=1e-3 * np.abs(pa).max())


def test_capture_batches_carry_host_lengths(tiny):
    seen = []

    def reducer(t, where, batch):
        seen.append((batch.host_lengths, batch.lengths.tolist(), batch.mask is batch.mask))

    capture.run(tiny, SEQS[:5], reducers={hooknames.name("resid_post", 0): reducer}, batch_size=2)
    assert [h for h, _, _ in seen] == [(13, 11), (9, 4), (2,)]  # longest first
    assert all(list(h) == d and same for h, d, same in seen)  # host copy = device lengths; one mask per batch
