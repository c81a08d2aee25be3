"""The sink metrics as pure functions, checked on hand-built attention matrices: Gu et al.'s
α_k and Sink_k^ε, Guo et al.'s dormancy score, the queries that see a key, and the per-token
table of hidden sinks (docs/sinks.md#sink-metric, docs/sinks.md#hidden-sinks,
docs/sinks.md#active-and-dormant-heads)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from mechscope.probes.lexical import surface_class as token_class  # noqa: F401  (re-exported)
from mechscope.probes.act import column_mean
from mechscope.probes.errors import InputError
from mechscope.probes.tokens import str_tokens


def alpha_from_pattern(pattern: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """α for every key of a causal pattern [..., T, T] → [..., T] (Gu et al. 2024):
    α_k = Σ_{i>=k} A[i,k] / (T − k + 1) (1-based k). ``lengths`` ([B], leading axis =
    batch) restricts each row to its first ``lengths[b]`` queries (right padding)."""
    if pattern.shape[-1] != pattern.shape[-2]:
        raise InputError("alpha_from_pattern needs a square [..., T, T] pattern.")
    return column_mean(pattern, 0, lengths)


def check_eps(eps: float) -> float:
    if not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise InputError(f"ε must lie strictly between 0 and 1, not {eps!r}.")
    return float(eps)


def sink_rate(alpha, eps: float = 0.3) -> np.ndarray:
    """Sink_k^ε = 100 · mean of 1[α_k > ε] over every leading axis of ``alpha`` [..., K]
    (samples, layers, heads). NaN entries (undefined α) are left out."""
    check_eps(eps)
    a = torch.as_tensor(alpha, dtype=torch.float64)
    a = a.reshape(-1, a.shape[-1])
    valid = ~torch.isnan(a)
    hit = (a > eps) & valid
    return (100.0 * hit.sum(0) / valid.sum(0).clamp(min=1)).numpy()


def dormancy_score(alpha_first, lengths) -> np.ndarray:
    """Mean attention on the first token over queries 2..T, from α_1 [N, ...] and lengths [N]:
    (α_1·T − 1)/(T − 1), since query 1 puts all its mass on itself."""
    a = np.asarray(alpha_first, dtype=np.float64)
    n = np.asarray(lengths, dtype=np.float64).reshape((-1,) + (1,) * (a.ndim - 1))
    return (a * n - 1.0) / np.maximum(n - 1.0, 1.0)


def enough_queries(lengths: torch.Tensor, n_keys: int, min_queries: int) -> torch.Tensor:
    """[B, K] bool: key k (0-based) of row b is seen by ``lengths[b] − k`` queries; True
    where that is at least ``min_queries``."""
    k = torch.arange(n_keys, device=lengths.device)
    return (lengths[:, None] - k[None, :]) >= min_queries


def _token_table(model, token_ids: np.ndarray, counts: np.ndarray, lengths=None, min_queries: int = 1) -> pd.DataFrame:
    """Per distinct token (positions ≥ 2 only — the first is the ordinary sink — and only
    where ``min_queries`` queries see the position, so the token could be judged):
    occurrences, how many are hidden sinks in ≥ 1 head, that fraction, mean heads per
    occurrence; most frequent sinks first."""
    ids = token_ids[:, 1:]
    cnt = counts[:, 1:]
    valid = ids >= 0
    if lengths is not None:
        pos = np.arange(1, token_ids.shape[1])[None, :]
        valid &= (np.asarray(lengths)[:, None] - pos) >= min_queries
    flat_ids, flat_cnt = ids[valid], cnt[valid]
    if flat_ids.size == 0:
        return pd.DataFrame(columns=["token_id", "token_repr", "class", "occurrences", "sink_occurrences",
                                     "sink_fraction", "mean_heads"])
    df = pd.DataFrame({"token_id": flat_ids, "hit": flat_cnt > 0, "heads": flat_cnt})
    g = df.groupby("token_id").agg(occurrences=("hit", "size"), sink_occurrences=("hit", "sum"), mean_heads=("heads", "mean"))
    g = g.reset_index()
    g["sink_fraction"] = g["sink_occurrences"] / g["occurrences"]
    strs = _decode_tokens(model, g["token_id"].tolist())
    g["token_repr"] = [repr(s) for s in strs]
    g["class"] = [token_class(s) for s in strs]
    g = g.sort_values(["sink_occurrences", "sink_fraction"], ascending=False).reset_index(drop=True)
    return g[["token_id", "token_repr", "class", "occurrences", "sink_occurrences", "sink_fraction", "mean_heads"]]


def _decode_tokens(model, ids: list[int]) -> list[str]:
    return str_tokens(model, ids) if model.tokenizer is not None else [f"<{i}>" for i in ids]
