"""LLM-Microscope metrics on point clouds whose answers are known."""

import math

import numpy as np
import pytest
import torch

from analyses.microscope import (
    anisotropy,
    linearity_score,
    microscope,
    token_class,
    token_nonlinearity,
    twonn_dimension,
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
    E = token_nonlinearity(X, Y)
    assert float(E.double().pow(2).sum()) == pytest.approx(1 - s, rel=1e-5)
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


@pytest.mark.parametrize("method", ["mle", "fit"])
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
    assert math.isfinite(twonn_dimension(dup))
    assert twonn_dimension(dup) == twonn_dimension(P)
    with pytest.raises(InputError):
        twonn_dimension(np.zeros((2, 3)))


def test_token_class():
    assert token_class(",") == "punctuation"
    assert token_class(" the") == "stop word"
    assert token_class(" 1999") == "number"
    assert token_class(" house") == "other"


def test_microscope_on_tiny_model():
    m = tiny_model(n_layers=2, d_model=16, d_vocab=50, seed=0)
    g = torch.Generator().manual_seed(0)
    texts = [torch.randint(0, 50, (40,), generator=g).tolist() for _ in range(10)]
    res = microscope(m, texts=texts, max_tokens=300, id_points=300)
    assert res.linearity.shape == (2,) and res.anisotropy.shape == (3,) and res.intrinsic_dim.shape == (3,)
    assert np.all((res.linearity <= 1 + 1e-9) & (res.linearity > 0))
    assert res.nonlinearity.shape == (300, 2)
    # Σ E² over tokens = 1 − linearity, per layer
    assert np.allclose(res.nonlinearity.double().pow(2).sum(0).numpy(), 1 - res.linearity, atol=1e-5)
    assert len(res.tokens) == 300
    with pytest.raises(InputError, match="d_model"):
        microscope(m, texts=[[1, 2, 3]])
    with pytest.raises(InputError, match="empty"):
        microscope(m, texts=[])
