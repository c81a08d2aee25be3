"""Sweeps.

Open a sweep folder written by ``mechscope sweep run``: its status, the report table (one row
per job: parameters and scalar summary metrics) with filters, the comparison figures, and
any finished job's saved result (its table and figures). See docs/sweeps.md.
"""

import streamlit as st

from mechscope.app import ui
from mechscope.probes.errors import InputError

st.title("Sweeps")
ui.sidebar_model()  # the shared sidebar; a sweep names its own models

folder = st.text_input("Sweep folder", "", key="sw_dir", placeholder="the --out of mechscope sweep run")
if not folder.strip():
    st.info("Run a sweep with `mechscope sweep run SPEC --out DIR` (docs/sweeps.md), then open DIR here.")
    st.stop()

from mechscope.sweeps.report import figures, report_table, status  # noqa: E402

with ui.guard():
    counts = status(folder.strip())
    table = report_table(folder.strip())
cols = st.columns(5)
for col, name in zip(cols, ("total", "done", "failed", "running", "pending")):
    col.metric(name.capitalize(), counts[name])

a, b, c = st.columns(3)
kinds = a.multiselect("Analysis", sorted(table.kind.dropna().unique()), key="sw_kind")
models = b.multiselect("Model", sorted(table.model.dropna().unique()), key="sw_model")
states = c.multiselect("Status", sorted(table.status.unique()), key="sw_status")
shown = table
if kinds:
    shown = shown[shown.kind.isin(kinds)]
if models:
    shown = shown[shown.model.isin(models)]
if states:
    shown = shown[shown.status.isin(states)]
shown = shown.dropna(axis=1, how="all")
st.dataframe(shown, hide_index=True, key="sw_table")
if counts["failed"]:
    with st.expander(f"Errors of the {counts['failed']} failed job(s)"):
        for key, err in counts["errors"].items():
            st.text(f"{key[:12]}: {err}")

st.header("Comparison")
figs = figures(shown)
if not figs:
    st.caption("No figure: the finished jobs shown vary no parameter and no model.")
for i, (name, fig) in enumerate(figs.items()):
    st.plotly_chart(fig, key=f"sw_fig_{i}")

st.header("One job")
done = shown[shown.status == "done"]
if done.empty:
    st.caption("No finished job among those shown.")
    st.stop()
params = [c for c in done.columns if c.startswith("param.")]


def _label(key: str) -> str:
    row = done[done.key == key].iloc[0]
    args = ", ".join(f"{p[6:]}={row[p]}" for p in params if row[p] is not None and str(row[p]) != "nan")
    return f"{key[:12]} · {row.kind} · {row.model}" + (f" · {args}" if args else "")


key = st.selectbox("Job", list(done.key), format_func=_label, key="sw_job")
with ui.guard():
    from pathlib import Path

    from mechscope.analyses.catalog import load_result

    path = Path(folder.strip()) / "jobs" / key
    if not (path / "result.json").is_file():
        raise InputError(f"The result of job {key[:12]} is missing from {path}.")
    res = load_result(path)
st.caption(f"{res.kind} on {res.model_id}; saved in {path} (re-run with `mechscope rerun {path}`).")
try:
    st.dataframe(res.to_frame(), hide_index=True, key="sw_job_table")
except NotImplementedError:
    pass
for name, fig in res.figures().items():
    st.plotly_chart(fig, key=f"sw_job_fig_{name}")
