"""Rudman et al. 2022's sanity clouds: which score ignores a cloud's mean and scale
(docs/isotropy.md#isoscore)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mechscope.analyses.isotropy.scores import average_cosine, isoscore, isoscore_star, partition_score


def rudman_clouds(n: int = 10, n_points: int = 5000, seed: int = 0) -> dict[str, np.ndarray]:
    """The clouds of Rudman et al. 2022's tests, in n dimensions: an isotropic Gaussian, all
    variance in one dimension, k of n dimensions used equally (k = n/2), the isotropic cloud
    shifted far from the origin, and rescaled (all ×100; one dimension ×10)."""
    g = np.random.default_rng(seed)
    iso = g.standard_normal((n_points, n))
    one = np.zeros((n_points, n))
    one[:, 0] = g.standard_normal(n_points)
    k = n // 2
    half = np.zeros((n_points, n))
    half[:, :k] = g.standard_normal((n_points, k))
    shifted = iso + 20.0
    scaled = iso * 100.0
    stretched = iso.copy()
    stretched[:, 0] *= 10
    return {"isotropic": iso, "one dimension": one, f"{k} of {n} dimensions": half, "isotropic + 20": shifted,
            "isotropic × 100": scaled, "dimension 0 × 10": stretched}


def rudman_table(n: int = 10, n_points: int = 5000, seed: int = 0) -> pd.DataFrame:
    rows = []
    for name, x in rudman_clouds(n, n_points, seed).items():
        rows.append({"cloud": name, "isoscore": isoscore(x), "isoscore_star": isoscore_star(x),
                     "avg_cosine": average_cosine(x, None), "partition": partition_score(x)})
    return pd.DataFrame(rows)


def figure_rudman(n: int = 10, n_points: int = 5000, seed: int = 0):
    import plotly.express as px

    df = rudman_table(n, n_points, seed).melt(id_vars=["cloud"], var_name="score", value_name="value")
    return px.bar(df, x="cloud", y="value", color="score", barmode="group",
                  title=f"Rudman et al.'s sanity clouds ({n} dimensions): only IsoScore ignores the mean and the scale")
