"""A sweep's status and its report: one row per job with its parameters and scalar summary
metrics (``DIR/report/table.parquet`` and ``table.csv``), and comparison figures — each
metric against each parameter the sweep varied, one line per model (Plotly HTML)."""

from __future__ import annotations

import json

from pathlib import Path

import pandas as pd

from mechscope.sweeps.store import REPORT, SweepStore

#: columns every report has, before the param.* and metric.* columns
BASE_COLUMNS = ("key", "status", "kind", "model", "weights", "shard", "seconds", "error", "in_plan")
MAX_METRICS_PER_KIND = 6


def status(directory) -> dict:
    """Counts of the latest plan's jobs: ``total``, ``done``, ``failed``, ``running`` (started
    and not finished: running now, or cut off), ``pending``; ``errors`` maps a failed key to
    its error line."""
    store = SweepStore.open_existing(directory)
    plan = store.plan()
    latest = store.latest()
    running = store.running()
    counts = {"total": len(plan), "done": 0, "failed": 0, "running": 0, "pending": 0}
    errors = {}
    for job in plan:
        key = job["key"]
        if key in running:
            counts["running"] += 1
        elif key in latest and latest[key]["event"] == "done":
            counts["done"] += 1
        elif key in latest:
            counts["failed"] += 1
            errors[key] = latest[key].get("error", "")
        else:
            counts["pending"] += 1
    return {**counts, "errors": errors}


def _cell(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


def report_table(directory) -> pd.DataFrame:
    """One row per job (the latest plan's, in plan order, then any other recorded job)."""
    store = SweepStore.open_existing(directory)
    plan = store.plan()
    latest = store.latest()
    running = store.running()
    planned = {j["key"] for j in plan}
    rows = []
    described = {j["key"]: j for j in plan}
    for key, e in latest.items():  # jobs of earlier specs: described by their index line
        if key not in planned:
            described[key] = {"key": key, "kind": e.get("kind"), "model": {"name": e.get("model")},
                              "weights": e.get("weights", ""), "inputs": e.get("inputs", {}),
                              "overrides": e.get("overrides", {})}
    for key, job in described.items():
        e = latest.get(key)
        state = "running" if key in running else (e["event"] if e else "pending")
        inputs = job.get("inputs") or {}
        row = {"key": key, "status": state, "kind": job["kind"], "model": job["model"]["name"],
               "weights": (job.get("weights") or "")[:12], "shard": inputs.get("shard"),
               "seconds": e.get("seconds") if e else None, "error": e.get("error") if e and state == "failed" else None,
               "in_plan": key in planned}
        for k, v in (job.get("overrides") or {}).items():
            row[f"param.{k}"] = _cell(v)
        for k, v in ((e or {}).get("metrics") or {}).items() if state == "done" else ():
            row[f"metric.{k}"] = v
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(BASE_COLUMNS)) if not rows else pd.DataFrame(rows)
    params = sorted(c for c in frame.columns if c.startswith("param."))
    metrics = sorted(c for c in frame.columns if c.startswith("metric."))
    return frame[[*BASE_COLUMNS, *params, *metrics]]


def _varied(frame: pd.DataFrame) -> list[str]:
    out = []
    for c in frame.columns:
        if c.startswith("param."):  # shards are averaged over, never an axis
            vals = frame[c].dropna()
            if vals.nunique() > 1:
                out.append(c)
    return out


def figures(table: pd.DataFrame) -> dict:
    """Comparison figures: for each analysis kind, each numeric metric against each varied
    parameter (x), one colour per model, averaged over text shards; a second varied parameter
    splits the panels."""
    import plotly.express as px

    out = {}
    done = table[table.status == "done"]
    for kind, sub in done.groupby("kind", sort=False):
        sub = sub.dropna(axis=1, how="all")
        metrics = [c for c in sub.columns if c.startswith("metric.") and pd.api.types.is_numeric_dtype(sub[c])
                   and not pd.api.types.is_bool_dtype(sub[c])][:MAX_METRICS_PER_KIND]
        varied = _varied(sub)
        if not varied:
            if sub.model.nunique() > 1:
                for m in metrics:
                    out[f"{kind}: {m[7:]} by model"] = px.bar(sub, x="model", y=m, title=f"{kind}: {m[7:]} by model")
            continue
        for x in varied:
            others = [v for v in varied if v != x]
            facet = others[0] if others else None
            for m in metrics:
                cols = ["model", x, m] + ([facet] if facet else [])
                d = sub[cols].copy()
                numeric = pd.to_numeric(d[x], errors="coerce").notna().all()
                if numeric:
                    d[x] = pd.to_numeric(d[x])
                    keys = ["model", x] + ([facet] if facet else [])
                    d = d.groupby(keys, as_index=False, dropna=False)[m].mean().sort_values(x)
                    fig = px.line(d, x=x, y=m, color="model", markers=True, facet_col=facet)
                else:
                    d[x] = d[x].astype(str)
                    fig = px.bar(d, x=x, y=m, color="model", barmode="group", facet_col=facet)
                title = f"{kind}: {m[7:]} by {x.removeprefix('param.')}"
                fig.update_layout(title=title)
                out[title] = fig
    return out


def build_report(directory) -> dict:
    """Write ``DIR/report/``: ``table.parquet``, ``table.csv`` and one HTML file per figure
    (offline plotly.js beside them). Returns ``{"table": DataFrame, "files": [paths]}``."""
    from mechscope.probes.results import PLOTLY_JS, _safe, offline_html, offline_plotlyjs
    from mechscope.sweeps.store import atomic_write

    store = SweepStore.open_existing(directory)
    table = report_table(directory)
    out = store.dir / REPORT
    out.mkdir(exist_ok=True)
    files = []
    parquet = out / "table.parquet"
    tmp = out / ".table.parquet.tmp"
    table.to_parquet(tmp, index=False)
    tmp.replace(parquet)
    files.append(parquet)
    atomic_write(out / "table.csv", table.to_csv(index=False))
    files.append(out / "table.csv")
    figs = figures(table)
    if figs:
        atomic_write(out / PLOTLY_JS, offline_plotlyjs())
    for name, fig in figs.items():
        path = out / f"{_safe(name)}.html"
        atomic_write(path, offline_html(fig))
        files.append(path)
    return {"table": table, "files": files, "figures": figs}


def format_status(s: dict) -> str:
    line = (f"{s['total']} jobs: {s['done']} done, {s['failed']} failed, {s['running']} started and not finished, "
            f"{s['pending']} pending")
    errs = [f"  failed {k[:12]}: {v}" for k, v in list(s["errors"].items())[:20]]
    return "\n".join([line, *errs])


