"""Running one job, wherever it runs: the local executor, a Ray actor, a background run."""

from __future__ import annotations

import time
from pathlib import Path


def params_of(desc: dict):
    """The Params of a job description (``Job.describe()``), rebuilt from its saved form."""
    from mechscope.analyses.catalog import import_all
    from mechscope.probes.results import PARAMS

    import_all()
    return PARAMS.from_dict(desc["params"])


def run_job(desc: dict, model, progress=None):
    """Run the analysis of one job description on ``model``; returns its Result."""
    from mechscope.probes.results import ANALYSES

    params = params_of(desc)
    fn = ANALYSES[desc["kind"]]
    return fn(model, params, progress=progress) if progress is not None else fn(model, params)


def error_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


def run_and_save(desc: dict, model, directory: Path, progress=None) -> dict:
    """Run a job and save its Result in ``directory`` (atomic). Returns the outcome
    ``{"event": "done", "metrics", "seconds"}`` or ``{"event": "failed", "error", "seconds"}``;
    never raises for a failing analysis (KeyboardInterrupt and SystemExit pass)."""
    from mechscope.sweeps.metrics import result_metrics

    start = time.perf_counter()
    try:
        res = run_job(desc, model, progress)
        res.save(directory)
        metrics = result_metrics(res)
    except Exception as exc:  # noqa: BLE001 — reported as the job's error, the sweep goes on
        return {"event": "failed", "error": error_line(exc), "seconds": time.perf_counter() - start}
    return {"event": "done", "metrics": metrics, "seconds": time.perf_counter() - start}


def read_folder(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in Path(directory).iterdir() if p.is_file()}


def write_folder(files: dict[str, bytes], directory: Path) -> None:
    """Write ``files`` as the folder ``directory``: into a temporary folder, renamed into place
    (a stale, unreadable folder of the same job is replaced)."""
    import shutil
    import tempfile

    from mechscope.probes.results import check_replaceable, swap_in

    directory = Path(directory)
    check_replaceable(directory)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        for name, data in files.items():
            if "/" in name or name.startswith("."):
                raise ValueError(f"unexpected file name {name!r}")
            (tmp / name).write_bytes(data)
        swap_in(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
