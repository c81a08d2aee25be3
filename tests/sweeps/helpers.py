"""Specs and comparisons shared by the sweep tests."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
TEXTS = "[[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16, 17, 18]]"
BASE = f'texts = {TEXTS}, variants = ["no_bos"], k_max = 4, min_queries = 2'


def spec_text(models: str = "tiny_a,tiny_b", eps=(0.1, 0.2, 0.3), failing: bool = True, extra: str = "") -> str:
    ms = ", ".join(f'{{ name = "{m.replace("_", "-")}", loader = "tests.sweeps.models:{m}" }}' for m in models.split(","))
    out = [f"name = \"tiny\"\nmodels = [{ms}]\n", "[[analysis]]", 'kind = "sinks"', f"params = {{ {BASE} }}",
           f"grid = {{ eps = [{', '.join(map(str, eps))}] }}"]
    if failing:  # every text is shorter than k_max: the analysis refuses it
        out += ["", "[[analysis]]", 'kind = "attention_sinks"',
                'params = { texts = [[1, 2, 3]], variants = ["no_bos"], k_max = 6 }']
    return "\n".join(out) + "\n" + extra


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def comparable(table: pd.DataFrame) -> pd.DataFrame:
    """A report table without what legitimately differs between runs (timings)."""
    return table.drop(columns=["seconds"]).sort_values("key").reset_index(drop=True)


def final_state(store) -> dict:
    """key -> (event, metrics) of each job's last finishing event."""
    return {k: (e["event"], e.get("metrics"), e.get("error")) for k, e in store.latest().items()}
