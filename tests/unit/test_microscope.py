"""LLM-Microscope metrics on point clouds whose answers are known."""

import math

import numpy as np
import pytest
import torch

from mechscope.analyses.microscope import (
    MicroscopeParams,
    MicroscopeResult,
    anisotropy,
    linearity_score,
    microscope,
    token_nonlinearity,
    twonn_dimension,
)
from mechscope.probes.errors import InputError
from mechscope.probes.results import Result
from tests.tiny import tiny_model


def reference_twonn(emb: torch.Tensor, reduction_factor: int = 5) -> float:
    """LLM-Microscope's TwoNN, re-implemented independently from its algorithm (AIRI-Institute
    LLM-Microscope ``intrinsic_dimension``): brute-force distances per point, kthvalue r1/r2,
    r1 < eps marked bad (μ = −1), sort, drop μ ≤ 1 + eps but keep them in F, fit through the
    origin on the first min(n // 5, n − 1) points."""
    eps = 1e-8
    e = emb.to(torch.float64)
    e = e - e.mean(dim=0, keepdim=True)
    e = e / e.norm(dim=1).mean()
    r1, r2 = [], []
    for i in range(len(e)):
        dd = torch.cat([(e[:i] - e[i]).norm(dim=1), (e[i + 1:] - e[i]).norm(dim=1)])
        r1.append(torch.kthvalue(dd, 1)[0])
        r2.append(torch.kthvalue(dd, 2)[0])
    r1, r2 = torch.stack(r1), torch.stack(r2)
    bad = r1 < eps
    mu = r2 / torch.where(bad, torch.ones_like(r1), r1)
    mu[bad] = -1
    mu, _ = torch.sort(mu)
    useless = int((mu <= 1 + eps).sum())
    mu = mu[useless:]
    n = mu.shape[0]
    f = torch.arange(1 + useless, n + 1 + useless, dtype=torch.float64) / (n + useless)
    k = min(n // reduction_factor, n - 1)
    x, y = torch.log(mu)[:k], -torch.log(1 - f)[:k]
    return float((x * y).sum() / (x * x).sum())


def _triplet_cloud(cs, duplicates: bool) -> np.ndarray:
    """Far-apart 1-D clusters in R^3: a triplet at 0, 1, 1 + c for each c (μ = 1 + c, c and
    (1 + c)/c), an equidistant triple 0, 1, 2 (μ = 2, 1, 2) and optionally a duplicated point."""
    pts, off = [], 0.0
    for c in cs:
        pts += [off, off + 1, off + 1 + c]
        off += 1000.0
    pts += [off, off + 1, off + 2]
    off += 1000.0
    if duplicates:
        pts += [off, off]
    P = np.zeros((len(pts), 3))
    P[:, 0] = pts
    return P


def test_twonn_reference_and_mle_differ_as_derived_by_hand():
    cs = [20, 30, 40, 50, 60]
    # N = 20 points: 15 from the triplets, 3 equidistant, 2 duplicates. Set aside (μ ≤ 1): the two
    # duplicates (r1 = 0) and the middle of the equidistant triple (μ = 1): m = 3, n = 17 left,
    # ⌊17/5⌋ = 3 smallest kept: μ = 61/60, 51/50, 41/40 at F = 4/20, 5/20, 6/20.
    x = np.log([61 / 60, 51 / 50, 41 / 40])
    y = -np.log(1 - np.array([4, 5, 6]) / 20)
    expected_ref = (x * y).sum() / (x * x).sum()  # ≈ 14.27
    P = _triplet_cloud(cs, duplicates=True)
    assert twonn_dimension(P) == pytest.approx(expected_ref, rel=1e-9)
    assert twonn_dimension(P, method="reference") == pytest.approx(14.2677, rel=1e-4)
    assert reference_twonn(torch.as_tensor(P)) == pytest.approx(expected_ref, rel=1e-9)
    # MLE without duplicates: N = 18 over Σ log μ = Σ_c 2 log(1 + c) + 2 log 2 (middle point: log 1)
    Q = _triplet_cloud(cs, duplicates=False)
    expected_mle = 18 / (2 * np.log(21 * 31 * 41 * 51 * 61) + 2 * np.log(2))  # ≈ 0.4755
    assert twonn_dimension(Q, method="mle") == pytest.approx(expected_mle, rel=1e-9)
    assert twonn_dimension(Q, method="mle") < 0.1 * twonn_dimension(Q)


@pytest.mark.parametrize("seed", [0, 1])
def test_twonn_matches_reference_algorithm_on_random_clouds(seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(400, 8, generator=g) @ torch.randn(8, 30, generator=g) + 3.0
    X = torch.cat([X, X[:7]])  # some duplicates too
    assert twonn_dimension(X) == pytest.approx(reference_twonn(X), rel=1e-9)


def test_linearity_of_exact_linear_pair_is_one():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(500, 20, generator=g)
    A = torch.randn(20, 20, generator=g)
    b = torch.randn(20, generator=g)
    assert linearity_score(X, X @ A + b) == pytest.approx(1.0, abs=1e-9)


def test_linearity_of_unrelated_pair_is_low_and_errors_add_up():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(2000, 20, generator=g)
    Y = torch.randn(2000, 20, generator=g)
    s = linearity_score(X, Y)
    # E[explained fraction] for independent Gaussians is d/(n-1) ≈ 0.01
    assert s < 0.03
    # a nonlinear map: Y = X², partly linear at most
    s2 = linearity_score(X, X**2 + 0.1 * X)
    assert s2 < 0.1


def test_token_nonlinearity_of_a_hand_built_quadratic():
    # x = (−1, 0, 1), y = x²: centred y = (1, −2, 1)/3 is orthogonal to x, so A = 0 and
    # E_i = |ỹ_i| = |y_i − ȳ| / ‖y − ȳ‖ = (1, 2, 1)/√6; linearity = 0.
    X = torch.tensor([[-1.0], [0.0], [1.0]], dtype=torch.float64)
    Y = X**2
    E = token_nonlinearity(X, Y)
    assert torch.allclose(E.double(), torch.tensor([1, 2, 1], dtype=torch.float64) / 6**0.5, atol=1e-6)
    assert linearity_score(X, Y) == pytest.approx(0.0, abs=1e-12)


def test_anisotropy_of_known_covariance():
    # points ±3 e1 and ±1 e2: centred covariance ∝ diag(18, 2) → anisotropy 18 / 20 = 0.9
    X = torch.tensor([[3.0, 0, 5], [-3.0, 0, 5], [0, 1.0, 5], [0, -1.0, 5]], dtype=torch.float64)
    assert anisotropy(X) == pytest.approx(0.9, rel=1e-12)


def test_anisotropy_isotropic_and_rank_one():
    g = torch.Generator().manual_seed(2)
    d = 16
    X = torch.randn(20000, d, generator=g)
    assert anisotropy(X) == pytest.approx(1 / d, rel=0.1)
    v = torch.randn(d, generator=g)
    R = torch.randn(300, 1, generator=g) * v + 5.0
    assert anisotropy(R) == pytest.approx(1.0, abs=1e-9)


def _embed(P: np.ndarray, D: int, seed: int) -> np.ndarray:
    """Place points isometrically in D dimensions with a random rotation."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    Z = np.zeros((len(P), D))
    Z[:, : P.shape[1]] = P
    return Z @ Q.T


@pytest.mark.parametrize("method", ["reference", "mle", "fit"])
def test_twonn_recovers_plane_and_sphere(method):
    rng = np.random.default_rng(0)
    n = 4000
    plane = _embed(rng.uniform(size=(n, 2)), 20, 1)
    s = rng.normal(size=(n, 4))
    sphere = _embed(s / np.linalg.norm(s, axis=1, keepdims=True), 20, 2)  # S^3: dimension 3
    # Tolerance: the MLE's standard error is d/√N ≈ 0.05 at N = 4000; boundary and curvature
    # effects bias TwoNN by a few percent, so ±10% separates 2 from 3 with a wide margin.
    assert twonn_dimension(plane, method=method) == pytest.approx(2.0, rel=0.1)
    assert twonn_dimension(sphere, method=method) == pytest.approx(3.0, rel=0.1)


def test_twonn_drops_duplicates_and_rejects_tiny_input():
    rng = np.random.default_rng(3)
    P = _embed(rng.uniform(size=(1500, 2)), 10, 4)
    dup = np.concatenate([P, P[:200]])  # duplicates would give r1 = 0
    assert math.isfinite(twonn_dimension(dup, method="mle"))
    assert twonn_dimension(dup, method="mle") == pytest.approx(twonn_dimension(P, method="mle"), rel=1e-12)
    assert math.isfinite(twonn_dimension(dup))
    with pytest.raises(InputError):
        twonn_dimension(np.zeros((2, 3)))


def test_lexical_class():
    from mechscope.probes.lexical import lexical_class

    assert lexical_class(",") == "punctuation"
    assert lexical_class(" the") == "stop word"
    assert lexical_class(" 1999") == "number"
    assert lexical_class(" house") == "other"


def test_microscope_on_tiny_model(tmp_path):
    m = tiny_model(n_layers=2, d_model=16, d_vocab=50, seed=0)
    g = torch.Generator().manual_seed(0)
    texts = [torch.randint(0, 50, (40,), generator=g).tolist() for _ in range(10)]
    res = microscope(m, texts=texts, total_tokens=300, id_points=300)
    assert isinstance(res.params, MicroscopeParams) and res.params.id_method == "reference"
    # rows as the reference's hidden_states (embed, after block 0, final norm) + the labelled extra row
    assert res.states == ["embed", "after block 0", "after block 1 (pre-norm)", "final norm"]
    assert res.in_reference == [True, True, False, True]
    assert res.linearity.shape == (2,) and res.anisotropy.shape == (4,) and res.intrinsic_dim.shape == (4,)
    assert np.all((res.linearity <= 1 + 1e-9) & (res.linearity > 0))
    assert res.nonlinearity.shape == (300, 2)
    assert len(res.tokens) == 300
    # the final-norm row is ln_final of the pre-norm row; the last reference transition uses it
    from mechscope.probes.capture import run
    from mechscope.probes.readout import final_norm
    seqs = [torch.tensor(t[:256]) for t in texts][:8]
    acts = run(m, seqs[:7] + [seqs[7][:20]], capture=["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"])
    h0 = torch.cat(acts.activations["blocks.0.hook_resid_post"]).float()
    h1 = torch.cat(acts.activations["blocks.1.hook_resid_post"]).float()
    with torch.no_grad():
        normed = final_norm(m, h1).float()
    assert res.linearity[1] == pytest.approx(linearity_score(h0, normed), abs=1e-6)
    assert res.anisotropy[3] == pytest.approx(anisotropy(normed), abs=1e-6)
    assert res.anisotropy[2] == pytest.approx(anisotropy(h1), abs=1e-6)
    # saved and re-run: equal tables
    back = Result.load(res.save(tmp_path / "r"))
    assert isinstance(back, MicroscopeResult) and back.params == res.params
    again = back.rerun(m)
    import pandas as pd
    pd.testing.assert_frame_equal(again.to_frame(), res.to_frame())
    pd.testing.assert_frame_equal(again.tokens, res.tokens)
    with pytest.raises(InputError, match="d_model"):
        microscope(m, texts=[[1, 2, 3]])
    with pytest.raises(InputError, match="empty"):
        microscope(m, texts=[])
    with pytest.raises(InputError, match="id_method"):
        MicroscopeParams(id_method="bogus")
