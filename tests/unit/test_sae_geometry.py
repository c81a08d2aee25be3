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


def _planted_lobes(n_groups=3, per=20, n_windows=3000, d=32, spatial=True, seed=0):
    """Latents in groups that fire together in windows; with ``spatial`` each group's decoder
    directions also sit around one direction of its own."""
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(n_groups), per)
    active = rng.integers(n_groups, size=n_windows)
    fires = rng.random((n_windows, len(group))) < np.where(active[:, None] == group[None, :], 0.7, 0.03)
    centres = np.linalg.qr(rng.standard_normal((d, n_groups)))[0].T
    dirs = (centres[group] if spatial else rng.standard_normal((len(group), d))) + 0.15 * rng.standard_normal((len(group), d))
    return fires, dirs, group


def test_phi_coefficient_matches_the_correlation_of_the_indicators():
    from mechscope.saes.geometry import phi_coefficient

    fires, _, _ = _planted_lobes(n_windows=500)
    fires[:, 5] = False  # a latent that never fires: phi 0, not nan
    f = fires.astype(np.float64)
    phi = phi_coefficient(f.T @ f, len(f))
    live = np.flatnonzero(f.any(0))
    np.testing.assert_allclose(phi[np.ix_(live, live)], np.corrcoef(f[:, live], rowvar=False), atol=1e-12)
    assert np.all(phi[5] == 0) and np.all(phi[:, 5] == 0)


def test_angular_similarity():
    from mechscope.saes.geometry import angular_similarity

    a = angular_similarity(np.array([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]))
    np.testing.assert_allclose(a, [[1, 0.5, 0], [0.5, 1, 0.5], [0, 0.5, 1]], atol=1e-12)


@pytest.mark.parametrize("spatial", [True, False])
def test_planted_lobes_agree_only_when_cooccurrence_groups_are_also_spatial(spatial):
    from sklearn.metrics import adjusted_mutual_info_score

    from mechscope.saes.geometry import angular_similarity, lobe_agreement, phi_coefficient

    fires, dirs, group = _planted_lobes(spatial=spatial)
    f = fires.astype(np.float64)
    got = lobe_agreement(phi_coefficient(f.T @ f, len(f)) + 1.0, angular_similarity(dirs), n_clusters=3, n_shuffles=50)
    # the co-occurrence clustering finds the planted groups either way
    assert adjusted_mutual_info_score(got["cooc_labels"], group) > 0.9
    # AMI of independent labels has mean 0 and, for 60 items in 3 groups, a spread well under 0.1
    assert abs(got["ami_shuffled"]) < 0.05 and got["ami_shuffled_sd"] < 0.1
    if spatial:
        assert got["ami"] > 0.9 and got["ami"] > got["ami_shuffled"] + 5 * got["ami_shuffled_sd"]
    else:
        assert got["ami"] < got["ami_shuffled"] + 4 * got["ami_shuffled_sd"]


def test_cooccurrence_counts_full_windows_from_position_1():
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig

    from mechscope.probes.capture import run_with_cache
    from mechscope.saes.geometry import cooccurrence
    from tests.tiny import tiny_model

    model = tiny_model()
    torch.manual_seed(0)
    cfg = TopKSAEConfig(d_in=32, d_sae=24, k=6, dtype="float32", device="cpu")
    cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    sae = TopKSAE(cfg)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(1, 50, (n,), generator=g).tolist() for n in (2, 4, 7, 10, 13)]
    w = 3
    params = SaeGeometryParams(texts=tuple(seqs), max_tokens=None, window=w, batch_size=2)
    got, n_windows = cooccurrence(model, {"s": sae}, params)["s"]
    want, n_want = np.zeros((24, 24)), 0
    for s in seqs:  # one sequence at a time, no padding
        _, cache = run_with_cache(model, torch.tensor([s]), names=[cfg.metadata.hook_name])
        fires = (sae.encode(cache[cfg.metadata.hook_name][0]) > 0).numpy()
        for start in range(1, len(s) - w + 1, w):  # full windows, position 0 left out
            f = fires[start : start + w].any(0).astype(np.float64)
            want += np.outer(f, f)
            n_want += 1
    assert n_windows == n_want == 0 + 1 + 2 + 3 + 4
    np.testing.assert_array_equal(got, want)
    assert want.sum() > 0


def test_lobes_figure_only_with_lobe_columns():
    import pandas as pd

    from mechscope.saes.geometry import SaeGeometryResult

    base = {"sae": ["a", "b"], "layer": [0, 6], "alpha": [0.3, 0.4], "alpha_ci95": [0.01, 0.01],
            "log_volume": [-700.0, -710.0]}
    lam = np.tile(np.linspace(1, 0.01, 200), (2, 1))
    plain = SaeGeometryResult(model_id="m", params=SaeGeometryParams(), table=pd.DataFrame(base), eigenvalues=lam)
    assert set(plain.figures()) == {"by_layer", "spectrum"}
    lobes = {**base, "ami": [0.2, 0.3], "ami_shuffled": [0.0, 0.0], "ami_shuffled_sd": [0.01, 0.01]}
    res = SaeGeometryResult(model_id="m", params=SaeGeometryParams(lobes=True), table=pd.DataFrame(lobes), eigenvalues=lam)
    fig = res.figures()["lobes"]
    assert list(fig.data[0].y) == [0.2, 0.3] and list(fig.data[1].y) == [0.0, 0.0]
