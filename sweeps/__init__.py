"""Sweeps: many analyses × parameters × models × text shards, resumable, on one process or
on Ray (docs/sweeps.md).

A TOML spec (:func:`load_spec`) expands into jobs keyed by content (:mod:`sweeps.jobs`);
:func:`run_sweep` runs the missing or failed ones — in this process (``executor="local"``,
the default) or on Ray actors that each keep one model loaded (``executor="ray"``) — and
records each finished job as a saved Result in ``DIR/jobs/<key>/`` plus a line in the
append-only ``DIR/index.jsonl`` (:mod:`sweeps.store`). :func:`status` counts the jobs,
:func:`report` builds one table across jobs (scalar metrics, Parquet and CSV) and
comparison figures. :mod:`sweeps.background` runs single jobs in a background thread for
the dashboard.
"""

from __future__ import annotations

from mechscope.sweeps.report import build_report, report_table, status  # noqa: F401
from mechscope.sweeps.run import Outcome, run_sweep  # noqa: F401
from mechscope.sweeps.spec import SpecError, SweepSpec, load_spec, parse_spec  # noqa: F401

__all__ = ["Outcome", "SpecError", "SweepSpec", "build_report", "load_spec", "parse_spec", "report_table",
           "run_sweep", "status"]
