"""Agreement of two [layers, heads] score maps: Spearman, Jaccard of top-k and of above-threshold sets."""

from __future__ import annotations

import numpy as np

from mechscope.analyses.retrieval.params import THRESHOLD
from mechscope.probes.stats import spearman  # noqa: F401  (re-exported)


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else float("nan")


def head_agreement(a: np.ndarray, b: np.ndarray, k: int = 10, threshold: float = THRESHOLD) -> dict:
    """Agreement of two [L, H] score maps."""
    def topk(x):
        order = np.argsort(-x.ravel(), kind="stable")[:k]
        return set(order.tolist())

    above_a = set(np.flatnonzero(a.ravel() > threshold).tolist())
    above_b = set(np.flatnonzero(b.ravel() > threshold).tolist())
    return {f"jaccard_top{k}": jaccard(topk(a), topk(b)), "jaccard_above": jaccard(above_a, above_b),
            "n_above_a": len(above_a), "n_above_b": len(above_b), "spearman": spearman(a, b)}
