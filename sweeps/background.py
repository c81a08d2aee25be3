"""Single analysis runs in a background thread, for the dashboard.

``submit(kind, params, model_name, out_dir)`` starts one job on the local executor in a
daemon thread and returns a :class:`RunHandle` at once: ``handle.progress`` (fraction done)
and ``handle.message``, ``handle.status`` ("running", "done", "failed", "cancelled"),
``handle.wait()``, ``handle.cancel()`` and ``handle.result()`` (the saved Result).

Cancelling sets a flag that the analysis' own ``progress(done, total)`` callback checks: the
next call raises :class:`Cancelled` inside the analysis, so the work really stops (an
analysis that reports no progress stops only when it ends; its result is then discarded).

``out_dir`` is a runs folder: each run is saved (``Result.save``) in ``out_dir/<run id>/``
and every state change is a line in ``out_dir/runs.jsonl``, so :func:`recent_runs` lists
runs after a restart (a run that was running when its process ended shows as
``interrupted``). Finished runs load with the usual ``mechscope.load_result``.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mechscope.probes.errors import InputError, MechscopeError

RUNS_INDEX = "runs.jsonl"
MARKER = "runs.json"


class Cancelled(MechscopeError):
    """Raised inside an analysis (from its progress callback) when its run is cancelled."""


def _append(folder: Path, event: dict) -> None:
    line = json.dumps({"time": time.time(), **event}, separators=(",", ":"), allow_nan=True) + "\n"
    with open(folder / RUNS_INDEX, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _open_runs_folder(out_dir) -> Path:
    folder = Path(out_dir)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise InputError(f"{folder} exists and is not a folder.")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).is_file():
        raise InputError(f"{folder} is a non-empty folder that holds no background runs; choose another.")
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / MARKER).is_file():
        from mechscope.sweeps.store import atomic_write

        atomic_write(folder / MARKER, json.dumps({"written_by": "mechscope background runs", "format": 1}))
    return folder


@dataclass
class RunHandle:
    """A background run. ``progress`` is in [0, 1]; ``status`` is running, done, failed or
    cancelled; ``error`` holds the failure's one line."""

    run_id: str
    kind: str
    model_name: str
    directory: Path
    status: str = "running"
    progress: float = 0.0
    message: str = "starting"
    error: str | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _finished: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def cancel(self) -> None:
        """Ask the run to stop; it stops at the analysis' next progress report."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> str:
        """Block until the run ends (or ``timeout``); returns the status."""
        self._finished.wait(timeout)
        return self.status

    def result(self):
        """The saved Result of a finished run."""
        if self.status != "done":
            raise InputError(f"Run {self.run_id} is {self.status}; it has no result.")
        from mechscope.analyses.catalog import load_result

        return load_result(self.directory)


def submit(kind: str, params=None, model_name: str | None = None, out_dir="runs", *, device: str = "cpu",
           model=None) -> RunHandle:
    """Run analysis ``kind`` with ``params`` (its Params, a dict of overrides, or None for the
    defaults) on ``model_name`` (default: the embedded model) in a background thread; save
    it under ``out_dir``. A loaded ``model`` may be given instead of loading by name.

    Bad input (unknown kind, bad params, unknown model) raises here, before the thread starts.
    """
    from mechscope.analyses.catalog import import_all
    from mechscope.probes.models import DEFAULT_MODEL, get_spec
    from mechscope.probes.results import ANALYSES

    import_all()
    by_fn = {fn.__name__: k for k, fn in ANALYSES.items()}
    kind = by_fn.get(kind, kind)
    if kind not in ANALYSES:
        raise InputError(f"Unknown analysis {kind!r}; choose from {', '.join(sorted(ANALYSES))}.")
    cls = ANALYSES[kind].params_cls
    if params is None:
        params = cls()
    elif isinstance(params, dict):
        from mechscope.probes.serial import build

        params = build(cls, params)
    elif not isinstance(params, cls):
        raise InputError(f"{kind} takes {cls.__name__}, not {type(params).__name__}.")
    if model is None:
        model_name = model_name or DEFAULT_MODEL
        get_spec(model_name)  # unknown model: one line now
    else:
        from mechscope.probes.models import model_id

        model_name = model_name or model_id(model)
    folder = _open_runs_folder(out_dir)
    run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
    handle = RunHandle(run_id, kind, model_name, folder / run_id)
    _append(folder, {"event": "submitted", "run": run_id, "kind": kind, "model": model_name,
                     "params": params.to_dict(), "pid": os.getpid()})
    t = threading.Thread(target=_work, args=(handle, folder, params, model, device), daemon=True,
                         name=f"mechscope-run-{run_id}")
    handle._thread = t
    t.start()
    return handle


def _work(handle: RunHandle, folder: Path, params, model, device: str) -> None:
    from mechscope.probes.results import ANALYSES
    from mechscope.sweeps.execute import error_line

    def progress(done: int, total: int) -> None:
        if handle._cancel.is_set():
            raise Cancelled("cancelled")
        handle.progress = min(1.0, done / total) if total else 0.0
        handle.message = f"{done}/{total}"

    try:
        if handle._cancel.is_set():
            raise Cancelled("cancelled")
        if model is None:
            handle.message = f"loading {handle.model_name}"
            from mechscope.probes.models import load

            model = load(handle.model_name, device=device).model
        handle.message = "running"
        res = ANALYSES[handle.kind](model, params, progress=progress)
        if handle._cancel.is_set():
            raise Cancelled("cancelled")
        handle.message = "saving"
        res.save(handle.directory)
        handle.status, handle.progress, handle.message = "done", 1.0, "done"
    except Cancelled:
        handle.status, handle.message = "cancelled", "cancelled"
    except Exception as exc:  # noqa: BLE001 — the run's error, shown by the caller
        handle.status, handle.error, handle.message = "failed", error_line(exc), "failed"
    finally:
        try:
            _append(folder, {"event": handle.status, "run": handle.run_id,
                             **({"error": handle.error} if handle.error else {})})
        finally:
            handle._finished.set()


def recent_runs(out_dir, limit: int = 50) -> list[dict]:
    """The runs recorded in ``out_dir`` (newest first): run id, kind, model, params, status
    (``running`` only while the process that started it is alive, else ``interrupted``),
    error and the folder of its saved Result."""
    folder = Path(out_dir)
    path = folder / RUNS_INDEX
    if not path.is_file():
        return []
    runs: dict[str, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if not isinstance(e, dict) or "run" not in e:
            continue
        if e.get("event") == "submitted":
            runs[e["run"]] = {"run": e["run"], "kind": e.get("kind"), "model": e.get("model"),
                              "params": e.get("params"), "submitted": e.get("time"), "status": "running",
                              "pid": e.get("pid"), "error": None, "directory": str(folder / e["run"])}
        elif e["run"] in runs:
            runs[e["run"]].update(status=e.get("event"), error=e.get("error"), finished=e.get("time"))
    for r in runs.values():
        if r["status"] == "running" and not _alive(r.get("pid")):
            r["status"] = "interrupted"
    return sorted(runs.values(), key=lambda r: r["submitted"] or 0, reverse=True)[:limit]


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
