"""Small statistics shared by the analyses: the percentile bootstrap of a mean (Efron &
Tibshirani 1993, ch. 13) and Spearman's rank correlation."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from mechscope.probes.errors import InputError


def bootstrap_ci(x: Sequence[float], n_boot: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``x`` and the percentile bootstrap interval of it at
    ``level``, from ``n_boot`` resamples of the items (``numpy.random.default_rng(seed)``).
    For a paired difference pass the per-item differences."""
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        raise InputError("bootstrap_ci needs at least one value.")
    if not 0 < level < 1:
        raise InputError("level must lie in (0, 1).")
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(a.mean()), float(lo), float(hi)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ of two arrays (flattened; average ranks for ties); NaN if either is constant."""
    ra = pd.Series(np.ravel(a)).rank().to_numpy()
    rb = pd.Series(np.ravel(b)).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
