"""Isotropy scores (docs/isotropy.md#isoscore, docs/isotropy.md#self-similarity): hand-built clouds with known scores, the `isoscore`
package as oracle, and the streamed per-layer analysis against a direct computation."""

import math

import numpy as np
import pytest
import torch

from mechscope.analyses import isotropy as iso
from mechscope.probes import capture, hooknames
from mechscope.probes.errors import InputError

from IsoScore import IsoScore as oracle  # the dev extra installs it: a missing oracle fails, never skips


def axis_cloud(n, k=None, scale=None):
    """±a_i·e_i for the first k of n dimensions: covariance ∝ diag(a_i²) exactly."""
    k = n if k is None else k
    a = np.ones(k) if scale is None else np.asarray(scale, dtype=np.float64)
    pts = []
    for i in range(k):
        e = np.zeros(n)
        e[i] = a[i]
        pts += [e, -e]
    return np.array(pts)


# -- the oracle ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(40, 8), (500, 32), (20, 60)])  # the last: fewer points than dimensions
def test_isoscore_matches_the_package(shape):
    g = np.random.default_rng(shape[1])
    x = g.standard_normal(shape) @ g.standard_normal((shape[1], shape[1])) + 3.0
    assert iso.isoscore(x) == pytest.approx(float(oracle.IsoScore(x)), abs=1e-6)
    eye = np.eye(shape[1])
    assert iso.isoscore_star(x, 0.3, "identity") == pytest.approx(float(oracle.IsoScore_star(x, eye, 0.3)), abs=1e-6)
    c = np.cov(x.T)
    scaled = np.trace(c) / shape[1] * eye
    assert iso.isoscore_star(x, 0.2) == pytest.approx(float(oracle.IsoScore_star(x, scaled, 0.2)), abs=1e-6)


# -- Rudman et al.'s tests ----------------------------------------------------------------


def test_isotropic_cloud_scores_one_and_one_dimension_zero():
    assert iso.isoscore(axis_cloud(7)) == pytest.approx(1.0, abs=1e-12)
    assert iso.isoscore(axis_cloud(7, k=1)) == pytest.approx(0.0, abs=1e-12)
    g = np.random.default_rng(0)
    assert iso.isoscore(g.standard_normal((20000, 5))) > 0.99


@pytest.mark.parametrize("n,k", [(10, 1), (10, 3), (10, 5), (10, 9), (6, 2)])
def test_k_of_n_dimensions_used_equally(n, k):
    assert iso.isoscore(axis_cloud(n, k)) == pytest.approx((k - 1) / (n - 1), abs=1e-12)


def test_mean_shift_misleads_cosine_and_partition_not_isoscore():
    n = 4
    x = axis_cloud(n)
    shifted = x + np.array([6.0, -6.0, 6.0, 6.0])
    assert iso.isoscore(shifted) == pytest.approx(1.0, abs=1e-12)
    # each point has one antipode among the 2n − 1 others: mean cosine −1/(2n − 1)
    assert iso.average_cosine(x, None) == pytest.approx(-1 / (2 * n - 1), abs=1e-12)
    # shifted: every point is 6·(±1,..) + e_i·(±1); cos = (36·4 + 6·(s_i ± s_j) …) well above 0.9
    assert iso.average_cosine(shifted, None) > 0.9
    assert iso.partition_score(x) == pytest.approx(1.0, abs=1e-12)  # Z(±e_i) equal for all i
    assert iso.partition_score(shifted) < 1e-6


def test_rescaling_misleads_partition_not_isoscore_or_cosine():
    a = np.array([1.0, 2.0, 3.0])
    x = axis_cloud(3, scale=a)
    # XᵀX = diag(2a²): eigenvectors e_i; Z(±e_i) = 2cosh(a_i) + 2n − 2 (the others contribute e⁰)
    z = 2 * np.cosh(a) + 4
    assert iso.partition_score(x) == pytest.approx(z.min() / z.max(), rel=1e-12)
    z10 = 2 * np.cosh(10 * a) + 4
    assert iso.partition_score(10 * x) == pytest.approx(z10.min() / z10.max(), rel=1e-9)
    assert iso.isoscore(10 * x) == pytest.approx(iso.isoscore(x), abs=1e-12)
    assert iso.average_cosine(10 * x, None) == pytest.approx(iso.average_cosine(x, None), abs=1e-12)
    # variances (1, 4, 9)·c: v̂ = √3 (1,4,9)/√98 — IsoScore by the formula, worked by hand
    v = math.sqrt(3) * np.array([1, 4, 9]) / math.sqrt(98)
    d2 = ((v - 1) ** 2).sum() / (2 * (3 - math.sqrt(3)))
    assert iso.isoscore(x) == pytest.approx(((3 - d2 * (3 - math.sqrt(3))) ** 2 - 3) / 6, abs=1e-12)


def test_seeded_random_pairs_estimate_the_mean_cosine():
    g = np.random.default_rng(1)
    x = g.standard_normal((300, 6)) + 0.7
    exact = iso.average_cosine(x, None)
    est = iso.average_cosine(x, 20000, seed=3)
    assert est == iso.average_cosine(x, 20000, seed=3)  # seeded
    assert abs(est - exact) < 4 * 0.5 / math.sqrt(20000)  # cosines lie in [−1, 1]: sd ≤ ~0.5


def test_isoscore_star_shrinks_towards_isotropy():
    x = axis_cloud(6, k=2)
    assert iso.isoscore_star(x, 0.0) == pytest.approx(0.2, abs=1e-12)  # ζ = 0: IsoScore, (2−1)/(6−1)
    assert iso.isoscore_star(x, 1.0) == pytest.approx(1.0, abs=1e-12)  # ζ = 1: the target alone
    # C = diag(c,c,0,0,0,0), C0 = (tr C/6)I = (c/3)I; ζ = 0.5 → eigenvalues (2/3 c)×2, (1/6 c)×4
    expected = iso.isoscore_from_eigenvalues([4, 4, 1, 1, 1, 1])
    assert iso.isoscore_star(x, 0.5) == pytest.approx(expected, abs=1e-12)


def test_self_similarity_by_hand():
    e1, e2 = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    # pairs: (e1, 2e1) cos 1, (e1, e2) 0, (2e1, e2) 0 → 1/3
    assert iso.mean_pair_cosine(torch.tensor([e1, [2.0, 0, 0], e2])) == pytest.approx(1 / 3, abs=1e-12)
    assert iso.self_similarity([torch.tensor([e1, e2]), torch.tensor([e1, e1])]) == pytest.approx(0.5, abs=1e-12)
    # pooled over pairs as Su & Collier's code does: (2 + 2) / (3·2 + 2·1) = 0.5, not the mean of
    # the per-sequence means (1/3 + 1)/2
    a, b = torch.tensor([e1, [2.0, 0, 0], e2]), torch.tensor([e1, e1])
    assert iso.self_similarity([a, b]) == pytest.approx(0.5, abs=1e-12)


def test_outlier_detection_finds_planted_dimensions():
    g = np.random.default_rng(2)
    x = g.standard_normal((5000, 64))
    x[:, 7] *= 4  # variance 16 ≈ 16/(63/64 + 16/64 …) ≫ 5× the average
    x[:, 40] *= 5
    x[:, 12] += 30  # |mean| 30 vs ~0.01 elsewhere
    out = iso.outlier_dimensions(x.var(0), x.mean(0), 5.0)
    assert set(out.loc[out.by_variance, "dim"]) == {7, 40}
    assert set(out.loc[out.by_mean, "dim"]) == {12}


def test_streamed_covariance_matches_direct():
    g = np.random.default_rng(3)
    # huge mean, as in residual streams; float32 activations (the float32 path only rounds products)
    x = torch.tensor(g.standard_normal((700, 2, 9)) * 0.5 + 800.0).float().double()
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        st = iso.CloudStats(dtype)
        for chunk in x.split(64):
            st.add(chunk)
        for gi in range(2):
            ref = torch.tensor(np.cov(x[:, gi].numpy().T))
            assert torch.allclose(st.cov()[gi], ref, atol=tol * ref.abs().max())
            m2 = x[:, gi].T @ x[:, gi]
            assert torch.allclose(st.second_moment()[gi], m2, rtol=1e-12 if dtype == torch.float64 else 1e-8)


@pytest.mark.parametrize("g, d", [(1, 300), (3, 9)])  # d ≥ 256: the block-triangle GEMM; G > 1: bmm
def test_padded_batches_fold_only_real_tokens(g, d):
    """A right-padded batch with junk in the padding gives the covariance of its real tokens."""
    from mechscope.probes.covariance import CloudStats, Workspace

    rng = np.random.default_rng(4)
    lengths = [[7, 3, 1], [5, 5, 2], [9, 1, 4]]
    ws = Workspace()
    for dtype in (torch.float64, torch.float32):
        st, real = CloudStats(dtype), []
        for lens in lengths:
            x = torch.tensor(rng.standard_normal((3, 9, g, d)) * 0.5 + 300.0, dtype=torch.float32)
            mask = torch.arange(9)[None] < torch.tensor(lens)[:, None]
            x[~mask] = 1e4  # padding junk must not reach the sums
            st.add_padded(x, mask, ws)
            real.append(x[mask].double())
        pts = torch.cat(real)
        assert st.n == pts.shape[0] == 37
        for gi in range(g):
            ref = torch.tensor(np.cov(pts[:, gi].numpy().T))
            # float32: each batch's product rounds to ~eps32 of its magnitude (centred values ~0.5)
            eps = torch.finfo(dtype).eps
            assert torch.allclose(st.cov()[gi], ref, rtol=100 * eps, atol=100 * eps * float(ref.abs().max()))
            m2 = pts[:, gi].T @ pts[:, gi]
            # the rounding sits in the centred sums Σ(x − K)(x − K)ᵀ, far smaller than Σxxᵀ
            centred = float((pts[:, gi] - pts[:, gi].mean(0)).pow(2).sum(0).max())
            assert torch.allclose(st.second_moment()[gi], m2, rtol=1e-12, atol=100 * eps * centred)
            assert torch.allclose(st.mean()[gi], pts[:, gi].mean(0), rtol=1e-9)


def test_pair_cosines_by_hand_and_top_eigenvectors():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [-1.0, 0.0]], dtype=torch.float64)
    i, j = torch.tensor([0, 0, 1, 3, 3]), torch.tensor([1, 3, 2, 0, 0])
    # cos: (0,1) 0, (0,3) −1, (1,2) 1/√2, (3,0) −1 twice
    assert float(iso.pair_cosines(x, i, j)) == pytest.approx((0 - 1 + 2**-0.5 - 2) / 5, abs=1e-15)
    both = torch.stack([x, 2 * x], 1)  # clouds side by side: the same cosines
    assert iso.pair_cosines(both, i, j).tolist() == pytest.approx([(0 - 1 + 2**-0.5 - 2) / 5] * 2, abs=1e-15)
    q, _ = torch.linalg.qr(torch.tensor(np.random.default_rng(0).standard_normal((40, 40))))
    cov = q @ torch.diag(torch.tensor([9.0, 4.0] + [1.0] * 38, dtype=torch.float64)) @ q.T
    v = iso.top_eigenvectors(cov, 2)
    for k in range(2):  # the known top-2 axes, up to sign
        assert abs(float(v[:, k] @ q[:, k])) == pytest.approx(1.0, abs=1e-9)


# -- the per-layer analysis on a tiny model ------------------------------------------


def test_analysis_equals_direct_computation(tiny64):
    seqs = [list(range(i, i + 12 + i)) for i in range(6)]
    # n_sample above the 87 tokens: the "sample" is every token in text order, so the sampled
    # scores (average cosine, partition) can be checked on the whole cloud too
    res = iso.isotropy(tiny64, texts=tuple(seqs), n_sample=1000, n_pairs=300, cov_dtype="float64", batch_size=4,
                       weights=True)
    L, H = tiny64.cfg.n_layers, tiny64.cfg.n_heads
    names = [hooknames.name("resid_pre", 0)] + [hooknames.name("resid_post", l) for l in range(L)]
    zs = [hooknames.name("z", l) for l in range(L)]
    acts = capture.run(tiny64, seqs, capture=names + zs).activations
    r = res.resid()
    for depth, n in enumerate(names):
        cloud = torch.cat(acts[n]).double()
        row = r[r.depth == depth].iloc[0]
        assert row.isoscore == pytest.approx(iso.isoscore(cloud), abs=1e-9)
        assert row.self_similarity == pytest.approx(iso.self_similarity(acts[n]), abs=1e-9)
        assert row.partition == pytest.approx(iso.partition_score(cloud), rel=1e-6)
        assert row.avg_cosine == pytest.approx(iso.average_cosine(cloud, 300, seed=0), abs=1e-9)
        assert row.isoscore_star == pytest.approx(iso.isoscore_star(cloud, 0.2), abs=1e-9)
        assert res.spectrum[depth] == pytest.approx(np.sort(np.linalg.eigvalsh(np.cov(cloud.numpy().T)))[::-1], abs=1e-9)
    last = torch.cat([tiny64.ln_final(a) for a in acts[names[-1]]]).detach().double()  # hidden_states[-1]
    row = r[r.depth == L + 1].iloc[0]
    assert row.site == "ln_final" and row.isoscore == pytest.approx(iso.isoscore(last), abs=1e-9)
    assert row.isotropy_su == pytest.approx(1 - iso.self_similarity([tiny64.ln_final(a).detach() for a in acts[names[-1]]]),
                                            abs=1e-9)
    hd = res.heads()
    for l in range(L):
        for h in range(H):
            outs = [z[:, h].double() @ tiny64.W_O[l, h].detach().double() for z in acts[zs[l]]]
            row = hd[(hd["layer"] == l) & (hd["head"] == h)].iloc[0]
            assert row.isoscore == pytest.approx(iso.isoscore(torch.cat(outs)), abs=1e-9)
            assert row.self_similarity == pytest.approx(iso.self_similarity(outs), abs=1e-9)
            out = torch.cat(outs)  # in d_model space: rank ≤ d_head
            assert row.isoscore_star == pytest.approx(iso.isoscore_star(out, 0.2), abs=1e-9)
            assert row.partition == pytest.approx(iso.partition_score(out), rel=1e-6)
            assert row.avg_cosine == pytest.approx(iso.average_cosine(out, 300, seed=0), abs=1e-9)
            od = iso.outlier_dimensions(out.var(0).numpy(), out.mean(0).numpy(), 5.0)
            assert row.n_outlier_var == int(od.by_variance.sum())
            assert row.isoscore_z == pytest.approx(iso.isoscore(torch.cat([z[:, h] for z in acts[zs[l]]])), abs=1e-9)
    w = res.weights().set_index("cloud")
    assert w.loc["W_E", "isoscore"] == pytest.approx(iso.isoscore(tiny64.W_E.detach()), abs=1e-9)
    assert w.loc["W_U", "partition"] == pytest.approx(iso.partition_score(tiny64.W_U.detach().T), abs=1e-9)
    assert res.pca.shape == (L + 2, 87, 2)
    assert set(res.sample_class) <= {"first token", "word", "number", "space", "punctuation", "newline"}


def test_result_round_trip(tiny, tmp_path):
    res = iso.isotropy(tiny, texts=tuple([list(range(3, 15))] * 2), n_sample=10, heads=False, weights=False)
    back = type(res).load(res.save(tmp_path / "r"))
    assert back.scores.equals(res.scores) and np.array_equal(back.pca, res.pca)
    assert set(res.figures()) == {"curves", "spectrum", "outliers", "pca"}


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize("call,msg", [
    (lambda: iso.isoscore(np.ones((1, 4))), "at least 2 points"),
    (lambda: iso.isoscore(np.array([[1.0, np.nan], [0.0, 1.0]])), "NaN"),
    (lambda: iso.isoscore(np.ones((5, 3))), "no variance"),
    (lambda: iso.isoscore_star(np.eye(3), 1.5), "ζ"),
    (lambda: iso.outlier_dimensions(np.ones(3), multiple=0.5), "multiple"),
    (lambda: iso.IsotropyParams(c0="zero"), "C0"),
    (lambda: iso.IsotropyParams(n_texts=0), "n_texts"),
])
def test_bad_input_one_clear_message(call, msg):
    with pytest.raises(InputError, match=msg):
        call()


def test_depth_out_of_range(tiny):
    res = iso.isotropy(tiny, texts=tuple([list(range(3, 15))] * 2), n_sample=10, heads=False, weights=False)
    with pytest.raises(InputError, match="out of range"):
        res.figure_pca(7)
    with pytest.raises(InputError, match="at least 2 tokens"):
        iso.isotropy(tiny, texts=((5,),), heads=False)


# -- whitening ------------------------------------------------------------------------


def test_whitening_fits_identity_covariance_on_the_fitting_set(tiny64, tmp_path):
    from mechscope.probes import whitening as wh
    from mechscope.probes.covariance import CloudStats

    seqs = [list(range(i, i + 30)) for i in range(8)]  # 240 points in 32 dims
    site = hooknames.name("resid_post", 1)
    acts = torch.cat(capture.run(tiny64, seqs, capture=[site]).activations[site]).double()
    st = CloudStats(torch.float64)
    st.add(acts)
    fit = wh.fit_from_stats("zca", site, st, eps=0.0)
    y = fit.transform(acts)
    assert torch.allclose(torch.tensor(np.cov(y.numpy().T)), torch.eye(32, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(y.mean(0), torch.zeros(32, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(fit.matrix, fit.matrix.T, atol=1e-10)  # ZCA: symmetric, stays in the residual basis
    # Zipfian: the *weighted* covariance becomes the identity
    g = torch.Generator().manual_seed(0)
    w = torch.rand(acts.shape[0], generator=g, dtype=torch.float64)
    zs = CloudStats(torch.float64)
    zs.add(acts, w)
    zf = wh.fit_from_stats("zipfian", site, zs, eps=0.0)
    yz = zf.transform(acts)
    wn = (w / w.sum())[:, None]
    mu = (wn * yz).sum(0)
    cz = ((yz - mu) * wn).T @ (yz - mu)
    assert torch.allclose(cz, torch.eye(32, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(mu, torch.zeros(32, dtype=torch.float64), atol=1e-9)
    # stored artefact: safetensors + sha256, read back; a changed file is refused
    digest = wh.save(fit, tmp_path / "zca.safetensors")
    back = wh.load(tmp_path / "zca.safetensors", digest)
    assert torch.equal(back.matrix, fit.matrix) and back.site == site
    assert (tmp_path / "zca.safetensors.sha256").read_text().split()[0] == digest
    with pytest.raises(Exception, match="corrupted or changed"):
        wh.load(tmp_path / "zca.safetensors", "0" * 64)


def test_outlier_removal_finds_planted_dimensions():
    from mechscope.probes import whitening as wh
    from mechscope.probes.covariance import CloudStats

    g = torch.Generator().manual_seed(4)
    x = torch.randn(3000, 40, generator=g, dtype=torch.float64)
    x[:, 3] *= 6
    x[:, 31] *= 8
    st = CloudStats(torch.float64)
    st.add(x)
    fit = wh.fit_from_stats("outlier_removal", "s", st, multiple=5.0)
    assert fit.dims == (3, 31)
    y = fit.transform(x)
    assert float(y[:, [3, 31]].abs().max()) == 0.0 and torch.allclose(y[:, 0], x[:, 0] - x[:, 0].mean())
    assert fit.transform(x, drop_removed=True).shape == (3000, 38)


def test_whitening_intervention_writes_the_whitened_stream(tiny64, tmp_path):
    from mechscope.probes import whitening as wh
    from mechscope.probes.covariance import CloudStats
    from mechscope.probes.interventions import INTERVENTIONS, applied

    seqs = [list(range(i, i + 20)) for i in range(6)]
    site = hooknames.name("resid_post", 0)
    acts = torch.cat(capture.run(tiny64, seqs, capture=[site]).activations[site]).double()
    st = CloudStats(torch.float64)
    st.add(acts)
    fit = wh.fit_from_stats("zca", site, st, eps=1e-9)
    digest = wh.save(fit, tmp_path / "w.safetensors")
    iv = wh.Whitening(str(tmp_path / "w.safetensors"), digest, strength=1.0, keep_norm=False)
    assert INTERVENTIONS.from_dict(iv.to_dict()) == iv  # data: a path and a digest
    x = capture.run(tiny64, [seqs[0]], capture=[site]).activations[site][0].double()
    seen = {}
    with applied(tiny64, [iv], extra_hooks=[(hooknames.name("resid_pre", 1), lambda t, hook: seen.setdefault("x", t.clone()))]):
        tiny64(torch.tensor([seqs[0]]))
    assert torch.allclose(seen["x"][0], fit.mean + (x - fit.mean) @ fit.matrix, atol=1e-9)
    with pytest.raises(InputError, match="strength"):
        wh.Whitening(iv.path, digest, strength=2.0).validate(tiny64)


def test_whitening_effect_analysis(tiny64):
    texts = tuple([list(range(i, i + 16)) for i in range(10)])
    import mechscope.analyses.isotropy as mod

    fit_seqs, held = [list(t) for t in texts[0::2]], [list(t) for t in texts[1::2]]
    p = mod.WhiteningParams(depth=2, methods=("zca", "outlier_removal"), n_sample=20, n_pairs=100, eps=0.0)
    # the pieces whitening_effect runs (its text sets need a tokenizer: integration test), on a
    # fitting and a held-out split
    from mechscope.probes import whitening as wh

    site = wh.site_for_depth(tiny64, 2)
    assert site == hooknames.name("resid_post", 1)
    st, _, _ = mod._score_variants(tiny64, fit_seqs, site, [lambda x: x], p)
    fit = wh.fit_from_stats("zca", site, st.stats, eps=0.0)
    after, _, _ = mod._score_variants(tiny64, fit_seqs, site, [lambda x: (x - fit.mean) @ fit.matrix], p)
    assert torch.allclose(after.stats.cov()[0], torch.eye(32, dtype=torch.float64), atol=1e-8)
    assert mod.isoscore_from_cov(after.stats.cov()[0]) == pytest.approx(1.0, abs=1e-8)
    held_after, _, _ = mod._score_variants(tiny64, held, site, [lambda x: (x - fit.mean) @ fit.matrix], p)
    assert mod.isoscore_from_cov(held_after.stats.cov()[0]) < 1 - 1e-3  # fitted elsewhere: not exactly isotropic
    with pytest.raises(InputError, match="depth"):
        wh.site_for_depth(tiny64, 3)
