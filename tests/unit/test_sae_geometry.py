"""SAE decoder-cloud geometry (Li et al. 2024, galaxy scale): planted spectra with known
power laws, an isotropic cloud, the fit range, normalisation, the shipped SAEs and the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from mechscope.probes.errors import InputError
from mechscope.saes.geometry import SaeGeometryParams, cloud_eigenvalues, power_law_fit


def _cloud_with_covariance(lam: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n points whose sample covariance (np.cov) is exactly V diag(lam) V^T for a random rotation V."""
    rng = np.random.default_rng(seed)
    d = len(lam)
    a = rng.standard_normal((n, d))
    a -= a.mean(0)  # centred columns ...
    q, _ = np.linalg.qr(a)  # ... stay centred after orthonormalisation (span of centred vectors)
    v, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return np.sqrt(n - 1) * (q * np.sqrt(lam)) @ v.T


def _slope_bound(ranks: np.ndarray, delta: float) -> float:
    """Largest change of a least-squares slope in (log10 rank, y) when every y moves by at most delta."""
    x = np.log10(ranks)
    dx = x - x.mean()
    return delta * np.abs(dx).sum() / (dx ** 2).sum()


def test_planted_exact_power_law_is_recovered_over_the_reference_range_only():
    d, alpha = 200, 1.3
    r = np.arange(1, d + 1, dtype=np.float64)
    lam = r ** -alpha
    lam[:10] *= 4.0  # ranks 1..10 and 151.. are off the power law: a fit that includes them is off
    lam[150:] *= 0.25
    x = _cloud_with_covariance(lam, n=1000)
    got = cloud_eigenvalues(x, normalize=False)
    np.testing.assert_allclose(got, lam, rtol=1e-9, atol=1e-12)
    fit = power_law_fit(got, 10, 150)
    assert fit["alpha"] == pytest.approx(alpha, rel=1e-9)
    assert fit["alpha_ci95"] < 1e-6  # an exact power law has no scatter about the line
    ranks = np.arange(11, 151)
    assert fit["log_volume"] == pytest.approx(-alpha * np.log(ranks).sum(), rel=1e-9)  # ln Π r^-α
    assert fit["mean_log_eig"] == pytest.approx(-alpha * np.log(ranks).mean(), rel=1e-9)
    assert fit["n_fit"] == 140


def test_sampled_power_law_recovers_its_slope_within_the_sampling_bound():
    # Gaussian sample of a covariance S with eigenvalues r^-alpha: the sample covariance is
    # S^1/2 W S^1/2 with W a white sample covariance, whose eigenvalues lie within the
    # Marchenko-Pastur edges (1 ± sqrt(d/n))^2; by Ostrowski's theorem each sample eigenvalue is
    # the true one times a factor in that range, so every log10 eigenvalue moves by at most
    # delta = -2 log10(1 - sqrt(d/n)) and the fitted slope by at most _slope_bound(delta).
    d, n, alpha = 200, 100_000, 0.8
    rng = np.random.default_rng(1)
    lam = np.arange(1, d + 1, dtype=np.float64) ** -alpha
    x = rng.standard_normal((n, d)) * np.sqrt(lam)
    g = np.sqrt(d / n)
    tol = _slope_bound(np.arange(11, 151), -2 * np.log10(1 - g))
    assert tol < 0.12
    fit = power_law_fit(cloud_eigenvalues(x, normalize=False))
    assert abs(fit["alpha"] - alpha) < tol
    assert fit["alpha"] - fit["alpha_ci95"] > 0.5  # clearly a power law, not flat


@pytest.mark.parametrize("normalize", [False, True])
def test_isotropic_gaussian_has_no_power_law(normalize):
    d, n = 200, 100_000
    x = np.random.default_rng(2).standard_normal((n, d))
    g = np.sqrt(d / n)
    tol = _slope_bound(np.arange(11, 151), -2 * np.log10(1 - g))
    fit = power_law_fit(cloud_eigenvalues(x, normalize=normalize))
    assert abs(fit["alpha"]) < tol
    # unit rows of an isotropic cloud: covariance ~ I/d, so the mean log eigenvalue is ~ -ln d
    if normalize:
        assert fit["mean_log_eig"] == pytest.approx(-np.log(d), abs=2 * g + 1e-3)


def test_normalize_removes_row_norms_and_off_keeps_them():
    d, n = 200, 4000
    rng = np.random.default_rng(3)
    u = rng.standard_normal((n, d)) * np.arange(1, d + 1) ** -0.5
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    scaled = u * rng.uniform(0.2, 5.0, size=(n, 1))
    np.testing.assert_allclose(cloud_eigenvalues(scaled), cloud_eigenvalues(u, normalize=False), rtol=1e-9, atol=1e-15)
    assert not np.allclose(cloud_eigenvalues(scaled, normalize=False), cloud_eigenvalues(u, normalize=False), rtol=0.1)


def test_bad_input():
    with pytest.raises(InputError):
        SaeGeometryParams(fit_start=10, fit_stop=12)
    with pytest.raises(InputError):
        SaeGeometryParams(fit_start=-1)
    with pytest.raises(InputError):
        power_law_fit(np.linspace(1, 0.1, 100), 10, 150)  # fewer dimensions than the fit range
    with pytest.raises(InputError):
        power_law_fit(np.r_[np.linspace(1, 0.1, 100), np.zeros(100)], 10, 150)  # rank-deficient cloud
    with pytest.raises(InputError):
        cloud_eigenvalues(np.zeros((5, 3)))  # zero vectors have no direction
    with pytest.raises(InputError):
        cloud_eigenvalues(np.ones(5))


def test_shipped_sae_matches_a_direct_computation(tmp_path):
    """One shipped SAE against numpy written out from the reference notebook's steps."""
    from mechscope.probes.results import Result
    from mechscope.saes.geometry import sae_geometry
    from mechscope.saes.store import load_sae, shipped_names

    name = shipped_names()[0]
    res = sae_geometry(None, saes=(name,))
    w = load_sae(name).W_dec.detach().double().numpy()
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    c = (w - w.mean(0)).T @ (w - w.mean(0)) / (len(w) - 1)
    lam = np.sort(np.linalg.eigvalsh(c))[::-1]
    slope = np.polyfit(np.log10(np.arange(11, 151)), np.log10(lam[10:150]), 1)[0]
    row = res.to_frame().iloc[0]
    assert row["alpha"] == pytest.approx(-slope, rel=1e-9)
    assert row["log_volume"] == pytest.approx(np.log(lam[10:150]).sum(), rel=1e-9)
    assert row["layer"] == int(name.rsplit("L", 1)[1]) and row["d_in"] == w.shape[1]
    assert res.model_id == name.split("/")[0]
    assert set(res.figures()) == {"by_layer", "spectrum"}
    back = Result.load(res.save(tmp_path / "g"))
    np.testing.assert_array_equal(back.eigenvalues, res.eigenvalues)
    assert back.params == res.params


def test_cli_geometry(tmp_path, capsys):
    from mechscope.app.cli import main
    from mechscope.saes.store import shipped_names

    name = shipped_names()[0]
    assert main(["sae", "geometry", "--saes", name, "--fit-stop", "100", "--out", str(tmp_path / "g")]) == 0
    out = capsys.readouterr().out
    assert name in out and (tmp_path / "g" / "result.json").exists()
    from mechscope.probes.results import Result

    back = Result.load(tmp_path / "g")
    assert back.params == SaeGeometryParams(saes=(name,), fit_stop=100)
    assert int(back.to_frame()["n_fit"].iloc[0]) == 90
