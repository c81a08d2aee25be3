"""ROC-AUC of a score map against a ground-truth set (docs/circuits.md#scoring-against-the-ground-truth)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def roc_auc(scores, labels) -> float:
    """ROC-AUC = P(score of a random positive > score of a random negative), ties count ½
    (the Mann–Whitney statistic; equal to the area under the step ROC curve)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    if y.all() or not y.any():
        return float("nan")
    ranks = pd.Series(s).rank(method="average").to_numpy()
    n1, n0 = y.sum(), (~y).sum()
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) points of the ROC curve, thresholds at every distinct score."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[distinct]
    fp = np.cumsum(~y)[distinct]
    tpr = np.r_[0, tp / max(1, y.sum())]
    fpr = np.r_[0, fp / max(1, (~y).sum())]
    return fpr, tpr
