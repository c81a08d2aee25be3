"""A sweep's folder: what it holds and how it is written so that a crash loses nothing.

::

    DIR/sweep.json          marker: written by a sweep (format, name, created)
    DIR/spec.toml           the spec of the latest run (atomic replace)
    DIR/plan.json           every job of the latest run (atomic replace)
    DIR/index.jsonl         append-only events, one JSON object a line:
                            {"event": "started" | "done" | "failed", "key", "time", ...}
    DIR/jobs/<key>/         each finished job's saved Result (``Result.save``: atomic rename)
    DIR/report/             ``mechscope sweep report``: table.parquet, table.csv, figures

A job is finished when its Result folder is in place; its ``done`` line follows. A line cut
by a crash is skipped when read, and a Result folder whose line was lost is found again
(:meth:`SweepStore.recover`), so a finished job is never run twice. The sweep writes only
inside a folder it created (or an empty one): anything else is refused.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from mechscope.probes.errors import InputError

FORMAT = 1
MARKER = "sweep.json"
INDEX = "index.jsonl"
PLAN = "plan.json"
SPEC = "spec.toml"
JOBS = "jobs"
REPORT = "report"


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_sweep_dir(path: Path) -> bool:
    try:
        doc = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("written_by") == "mechscope sweep"


class SweepStore:
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    # -- creation -----------------------------------------------------------------------
    @classmethod
    def open_for_run(cls, directory: str | Path, name: str = "sweep") -> "SweepStore":
        """Create ``directory`` (or adopt an empty one) as a sweep folder; reopen one that a
        sweep wrote. A file, or a non-empty folder a sweep did not write, is refused."""
        d = Path(directory)
        if d.is_symlink() or (d.exists() and not d.is_dir()):
            raise InputError(f"{d} exists and is not a folder; choose another --out.")
        if d.is_dir() and any(d.iterdir()) and not is_sweep_dir(d):
            raise InputError(f"{d} is a non-empty folder that no sweep wrote; choose another --out.")
        d.mkdir(parents=True, exist_ok=True)
        store = cls(d)
        if not (d / MARKER).is_file():
            atomic_write(d / MARKER, json.dumps({"written_by": "mechscope sweep", "format": FORMAT, "name": name,
                                                 "created": _now()}, indent=1))
        (d / JOBS).mkdir(exist_ok=True)
        return store

    @classmethod
    def open_existing(cls, directory: str | Path) -> "SweepStore":
        d = Path(directory)
        if not is_sweep_dir(d):
            raise InputError(f"{d} is not a sweep folder (no {MARKER} written by mechscope sweep).")
        return cls(d)

    # -- paths --------------------------------------------------------------------------
    def job_dir(self, key: str) -> Path:
        return self.dir / JOBS / key

    # -- plan and spec ------------------------------------------------------------------
    def write_plan(self, jobs, spec_text: str | None) -> None:
        if spec_text is not None:
            atomic_write(self.dir / SPEC, spec_text)
        atomic_write(self.dir / PLAN, json.dumps({"time": _now(), "jobs": [j.describe() for j in jobs]}))

    def plan(self) -> list[dict]:
        try:
            return json.loads((self.dir / PLAN).read_text())["jobs"]
        except (OSError, ValueError, KeyError):
            return []

    # -- the index ----------------------------------------------------------------------
    def append(self, event: dict) -> None:
        """Append one event line (flushed and fsynced: once this returns, it is on disk)."""
        line = json.dumps({"time": _now(), **event}, allow_nan=True, separators=(",", ":")) + "\n"
        with open(self.dir / INDEX, "a+b") as f:
            if f.tell() > 0:  # a line cut by a crash must not swallow this one
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = "\n" + line
            f.write(line.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    def events(self) -> list[dict]:
        path = self.dir / INDEX
        if not path.is_file():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash
            if isinstance(doc, dict) and "key" in doc and "event" in doc:
                out.append(doc)
        return out

    def latest(self) -> dict[str, dict]:
        """Each job's last finishing event (done or failed), by key; a done job stays done
        only while its Result folder is in place."""
        last: dict[str, dict] = {}
        for e in self.events():
            if e["event"] in ("done", "failed"):
                last[e["key"]] = e
        return {k: e for k, e in last.items()
                if e["event"] != "done" or (self.job_dir(k) / "result.json").is_file()}

    def running(self) -> dict[str, dict]:
        """Jobs whose last event is ``started`` (running now, or cut off by a crash)."""
        last: dict[str, dict] = {}
        for e in self.events():
            last[e["key"]] = e
        return {k: e for k, e in last.items() if e["event"] == "started"}

    def recover(self, plan: list) -> int:
        """Record as done every planned job whose Result folder is in place but whose done
        line was lost (a crash between the save and the append). Returns how many."""
        from mechscope.sweeps.metrics import result_metrics

        latest = self.latest()
        n = 0
        for job in plan:
            key = job.key
            if latest.get(key, {}).get("event") == "done" or not (self.job_dir(key) / "result.json").is_file():
                continue
            try:
                metrics = result_metrics(_load(self.job_dir(key)))
            except InputError:
                continue  # not readable: it runs again (its folder is replaced)
            self.append({"event": "done", "key": key, **_job_fields(job), "metrics": metrics, "recovered": True})
            n += 1
        return n


def _load(path: Path):
    from mechscope.analyses.catalog import load_result

    return load_result(path)


def _job_fields(job) -> dict:
    d = job.describe()
    return {"kind": d["kind"], "model": d["model"]["name"], "weights": d["weights"], "overrides": d["overrides"],
            "inputs": d["inputs"]}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
