"""A result's scalar summary metrics: one row of the sweep report per job.

Taken, in this order, from: the result's scalar fields (numbers and booleans that are not
its parameters); its ``summary()`` when that is a mapping of scalars or a one-row table; a
few per-kind headline numbers (:data:`HEADLINES`, e.g. Gu et al.'s Sink_1^ε per first-token
variant for ``sinks``); and, for a table of several rows, the mean of each numeric column
(``mean_<column>``; index columns such as layer, head, pos, k and the
parameters are left out). Non-finite values are kept as NaN.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np


def _sinks(res) -> dict:
    rates = res.sink_rates()
    out = {}
    for row in rates[rates.k == 1].itertuples():
        out[f"sink_rate_k1_{row.variant}"] = float(row.sink_rate)
    return out


#: analysis kind -> its headline metrics (the numbers its paper reports)
HEADLINES: dict[str, Callable] = {"sinks": _sinks}


#: table columns that index rows (not measurements): never averaged
INDEX_COLUMNS = frozenset({"layer", "head", "kv_head", "pos", "position", "k", "neuron", "text", "text_index", "index",
                           "token", "token_id", "id", "rank", "step", "feature", "latent", "batch", "seed"})


def _scalar(v):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    if hasattr(v, "ndim") and getattr(v, "ndim", 1) == 0 and hasattr(v, "item"):
        return _scalar(v.item())
    return None


def result_metrics(res) -> dict:
    out: dict = {}
    for f in dataclasses.fields(res):
        if f.name in ("params", "model_id"):
            continue
        v = _scalar(getattr(res, f.name))
        if v is not None:
            out[f.name] = v
    summary = getattr(res, "summary", None)
    if callable(summary):
        try:
            s = summary()
        except Exception:  # noqa: BLE001 — a summary that needs arguments or fails adds nothing
            s = None
        if isinstance(s, dict):
            for k, v in s.items():
                v = _scalar(v)
                if v is not None:
                    out[str(k)] = v
        elif hasattr(s, "columns") and len(s) == 1:
            for c in s.columns:
                v = _scalar(s[c].iloc[0])
                if v is not None:
                    out[str(c)] = v
    headline = HEADLINES.get(getattr(res.params, "kind", ""))
    if headline is not None:
        try:
            out.update(headline(res))
        except Exception:  # noqa: BLE001
            pass
    try:
        frame = res.to_frame()
    except NotImplementedError:
        frame = None
    if frame is not None and len(frame):
        num = frame.select_dtypes(include=["number", "bool"])
        fields = {f.name for f in dataclasses.fields(res.params)} if dataclasses.is_dataclass(res.params) else set()
        for c in num.columns:
            if str(c) in fields or str(c) in INDEX_COLUMNS:
                continue
            col = num[c].astype(float)
            name = str(c) if len(frame) == 1 else f"mean_{c}"
            if name not in out:
                val = float(col.mean()) if col.notna().any() else math.nan
                out[name] = val
    return {k: (float(v) if isinstance(v, float) else v) for k, v in out.items()}
