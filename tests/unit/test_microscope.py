"""LLM-Microscope metrics on point clouds whose answers are known."""

import math

import numpy as np
import pytest
import torch

from analyses.microscope import (
    anisotropy,
    contextualisation,
    linearity_score,
    microscope,
    token_class,
    token_nonlinearity,
    twonn_dimension,
    twonn_from_ratios,
)
from probes.errors import InputError
from tests.tiny import tiny_model


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
    # a hand-derived middle case: Y = X·A + noise with Var(noise) = Var(XA) on every
    # coordinate; after centring and scaling, half the variance of Y is linear in X
    A = torch.linalg.qr(torch.randn(20, 20, generator=g))[0]  # orthogonal: Var(XA) = 1 per coordinate
    Y2 = X @ A + torch.randn(2000, 20, generator=g)
    assert linearity_score(X, Y2) == pytest.approx(0.5, abs=0.03)
    # per-token nonlinearity of the exact linear part is ~0, of pure noise tokens is large
    E = token_nonlinearity(X, X @ A)
    assert float(E.max()) < 1e-6
    # a nonlinear map: Y = X², partly linear at most
    s2 = linearity_score(X, X**2 + 0.1 * X)
    assert s2 < 0.1


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


def test_twonn_estimators_from_ratios_by_hand():
    """Twelve ratios: two ties (μ = 1, a duplicate and an equidistant pair) and log μ =
    0.1, 0.2, …, 1.0. Reference: the ties are set aside but stay in the CDF (N = 12); the
    fit uses the smallest 10 // 5 = 2 remaining: x = (0.1, 0.2), F = (3/12, 4/12),
    y = (ln 4/3, ln 3/2), d = (0.1 ln 4/3 + 0.2 ln 3/2) / 0.05 = 2.1972. MLE over the ten
    distinct ratios: 10 / Σ log μ = 10 / 5.5 = 1.8182."""
    mu = np.r_[1.0, 1.0, np.exp(np.arange(1, 11) / 10)][::-1]  # order must not matter
    ref = (0.1 * math.log(4 / 3) + 0.2 * math.log(3 / 2)) / 0.05
    assert twonn_from_ratios(mu, "reference") == pytest.approx(ref, rel=1e-12)
    assert ref == pytest.approx(2.197224, abs=1e-6)
    assert twonn_from_ratios(mu, "mle") == pytest.approx(10 / 5.5, rel=1e-12)
    with pytest.raises(InputError, match="TwoNN method"):
        twonn_from_ratios(mu, "median")


def test_twonn_reference_matches_an_independent_brute_force():
    """The reference estimator against a direct transcription of LLM-Microscope's steps
    (brute-force pairwise distances in torch, written independently of the sklearn route)."""
    rng = np.random.default_rng(7)
    X = torch.from_numpy(_embed(rng.normal(size=(600, 5)), 12, 3) * 3.0 + 1.0)
    Z = X - X.mean(0, keepdim=True)
    Z = Z / Z.norm(dim=1).mean()
    D = torch.cdist(Z, Z)
    D.fill_diagonal_(float("inf"))
    two = D.topk(2, dim=1, largest=False).values
    mu = torch.sort(two[:, 1] / two[:, 0]).values
    keep = mu[(mu > 1 + 1e-8)]
    set_aside, n = len(mu) - len(keep), len(keep)
    F = (torch.arange(1, n + 1) + set_aside).double() / len(mu)
    use = min(n // 5, n - 1)
    x, y = torch.log(keep[:use]), -torch.log(1 - F[:use])
    brute = float((x * y).sum() / (x * x).sum())
    assert twonn_dimension(X, method="reference") == pytest.approx(brute, rel=1e-9)
    # on this 5-dimensional cloud the three estimators differ
    assert abs(twonn_dimension(X, "reference") - twonn_dimension(X, "mle")) > 0.05


def test_twonn_drops_duplicates_and_rejects_tiny_input():
    rng = np.random.default_rng(3)
    P = _embed(rng.uniform(size=(1500, 2)), 10, 4)
    dup = np.concatenate([P, P[:200]])  # duplicates would give r1 = 0
    assert math.isfinite(twonn_dimension(dup, "mle"))
    assert twonn_dimension(dup, "mle") == twonn_dimension(P, "mle")  # merged
    # the reference keeps duplicates in the CDF (set aside, not merged): a different number
    assert math.isfinite(twonn_dimension(dup)) and twonn_dimension(dup) != twonn_dimension(P)
    with pytest.raises(InputError):
        twonn_dimension(np.zeros((2, 3)))


def test_token_class():
    assert token_class(",") == "punctuation"
    assert token_class(" the") == "stop word"
    assert token_class(" 1999") == "number"
    assert token_class(" house") == "other"


def test_contextualisation_proxy_on_a_planted_prefix_memory():
    """States that carry the mean of the past embeddings exactly give R² = 1 on held-out
    texts; states of pure noise give R² ≤ ~0."""
    g = torch.Generator().manual_seed(4)
    lengths = [30] * 8
    E = torch.randn(240, 6, generator=g, dtype=torch.float64)
    memory, start = torch.zeros(240, 6, dtype=torch.float64), 0
    for n in lengths:
        e = E[start : start + n]
        memory[start + 1 : start + n] = e.cumsum(0)[:-1] / torch.arange(1, n, dtype=torch.float64)[:, None]
        start += n
    M = torch.randn(6, 6, generator=g, dtype=torch.float64)
    r2, err = contextualisation(memory @ M, E, lengths)  # an invertible linear code of the memory
    assert r2 == pytest.approx(1.0, abs=1e-9)
    assert torch.isnan(err[0]) and float(err[1:30].max()) < 1e-6
    r2_noise, _ = contextualisation(torch.randn(240, 6, generator=g, dtype=torch.float64), E, lengths)
    assert r2_noise < 0.1


def test_microscope_on_tiny_model(tmp_path):
    import pandas as pd

    from probes.results import Result

    m = tiny_model(n_layers=2, d_model=16, d_vocab=50, seed=0)
    g = torch.Generator().manual_seed(0)
    texts = [torch.randint(0, 50, (40,), generator=g).tolist() for _ in range(10)]
    res = microscope(m, texts=texts, max_tokens=300, id_points=300)
    # reference rows: embed, after block 0, final (normed); extra labelled row: pre-norm last block
    assert res.states == ("embed", "after block 0", "final (normed)", "after block 1 (pre-norm)")
    assert res.anisotropy.shape == (4,) and res.intrinsic_dim.shape == (4,) and res.contextualisation.shape == (4,)
    assert res.linearity.shape == (3,) and np.isnan(res.linearity[-1])
    assert np.all((res.linearity[:-1] <= 1 + 1e-9) & (res.linearity[:-1] > 0))
    assert res.nonlinearity.shape == (300, 2)
    # the final normed row is ln_final of the pre-norm row: RMSNorm is scale-free per token,
    # so their anisotropies differ but a linear map relates them exactly only up to per-token scale
    assert res.to_frame()["id_method"].iloc[0] == "reference"
    res.save(tmp_path / "mic")
    back = Result.load(tmp_path / "mic")
    pd.testing.assert_frame_equal(back.rerun(m).to_frame(), res.to_frame())
    with pytest.raises(InputError, match="d_model"):
        microscope(m, texts=[[1, 2, 3]])
    with pytest.raises(InputError, match="empty"):
        microscope(m, texts=[])
