"""Running a sweep: plan, skip what is done, run the rest on an executor, record each job.

* ``local`` (default): in this process, jobs grouped by model, one model load per model.
* ``ray``: one long-lived actor per model (``actors`` of them per model), each loading its
  model once and running many jobs, ``gpus_per_actor`` GPUs each (fractions share a GPU:
  0.25 puts four small-model actors on one card). The driver hands each actor one job at a
  time and is the only writer of the sweep folder: an actor returns the saved Result's files
  and the driver renames them into place. When an actor dies (its process killed, out of
  memory) its job goes back to the queue for another actor — a fresh one replaces the dead
  — up to ``max_retries`` times, then is recorded failed with the error. A job whose
  analysis raises is recorded failed at once (it would fail again) and the others go on.

Either way a finished job is on disk (Result folder, then its ``done`` line in the index)
before the next is counted, so Ctrl-C or a crash loses no finished job.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from mechscope.probes.errors import InputError
from mechscope.sweeps.execute import error_line, run_and_save, write_folder
from mechscope.sweeps.jobs import Job, load_model
from mechscope.sweeps.spec import SweepSpec
from mechscope.sweeps.store import SweepStore, _job_fields


@dataclass
class Outcome:
    total: int  # jobs in the spec
    skipped: int  # already done before this run
    done: int  # finished in this run
    failed: int  # failed in this run
    errors: dict  # key -> error line

    def line(self) -> str:
        return (f"{self.total} jobs: {self.skipped} already done, {self.done} ran, {self.failed} failed"
                + ("" if not self.failed else f" (see `mechscope sweep status`)"))


def pending_jobs(store: SweepStore, jobs: list[Job]) -> list[Job]:
    latest = store.latest()
    return [j for j in jobs if latest.get(j.key, {}).get("event") != "done"]


def run_sweep(spec: SweepSpec, out: str | Path, *, executor: str = "local", address: str | None = None,
              gpus_per_actor: float = 0.0, actors: int = 1, cpus_per_actor: float = 1.0, max_retries: int = 2,
              device: str | None = None, spec_text: str | None = None, show_progress: bool = True) -> Outcome:
    """Run every job of ``spec`` that is not done yet in the sweep folder ``out``."""
    if executor not in ("local", "ray"):
        raise InputError(f"Unknown executor {executor!r}: local or ray.")
    if actors < 1:
        raise InputError("--actors must be at least 1.")
    if gpus_per_actor < 0 or cpus_per_actor < 0:
        raise InputError("--gpus-per-actor and --cpus-per-actor cannot be negative.")
    if max_retries < 0:
        raise InputError("max_retries cannot be negative.")
    device = device or spec.device
    if executor == "ray" and device.startswith("cuda") and gpus_per_actor == 0:
        raise InputError(f"device {device} on Ray needs --gpus-per-actor (e.g. 1, or 0.25 to share a GPU).")
    jobs = spec.jobs()
    store = SweepStore.open_for_run(out, spec.name)
    store.write_plan(jobs, spec_text)
    store.recover(jobs)
    todo = pending_jobs(store, jobs)
    outcome = Outcome(total=len(jobs), skipped=len(jobs) - len(todo), done=0, failed=0, errors={})
    if not todo:
        return outcome
    bar = _Bar(len(todo), show_progress)
    try:
        if executor == "local":
            _run_local(store, todo, device, outcome, bar)
        else:
            _run_ray(store, todo, device, outcome, bar, address=address, gpus_per_actor=gpus_per_actor,
                     actors=actors, cpus_per_actor=cpus_per_actor, max_retries=max_retries)
    finally:
        bar.close()
    return outcome


class _Bar:
    """tqdm over jobs with done / failed / running / remaining."""

    def __init__(self, total: int, show: bool):
        self.total = total
        self.bar = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="sweep", unit="job")
        self.done = self.failed = self.running = 0

    def update(self, done: int = 0, failed: int = 0, running: int | None = None) -> None:
        self.done += done
        self.failed += failed
        if running is not None:
            self.running = running
        if self.bar is not None:
            self.bar.update(done + failed)
            self.bar.set_postfix(done=self.done, failed=self.failed, running=self.running,
                                 remaining=self.total - self.done - self.failed, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _record(store: SweepStore, job: Job, result: dict, outcome: Outcome, bar: _Bar, **extra) -> None:
    store.append({"key": job.key, **_job_fields(job), **result, **extra})
    if result["event"] == "done":
        outcome.done += 1
        bar.update(done=1)
    else:
        outcome.failed += 1
        outcome.errors[job.key] = result.get("error", "")
        bar.update(failed=1)


# ---------------------------------------------------------------------------------------
# local


def _run_local(store: SweepStore, todo: list[Job], device: str, outcome: Outcome, bar: _Bar) -> None:
    by_model: dict[str, list[Job]] = {}
    for j in todo:
        by_model.setdefault(j.model.name, []).append(j)
    for jobs in by_model.values():
        try:
            model = load_model(jobs[0].model, device)
        except Exception as exc:  # noqa: BLE001 — every job of this model fails with the load error
            for j in jobs:
                _record(store, j, {"event": "failed", "error": error_line(exc), "seconds": 0.0}, outcome, bar)
            continue
        for j in jobs:
            store.append({"event": "started", "key": j.key, "worker": os.getpid(), "executor": "local"})
            bar.update(running=1)
            result = run_and_save(j.describe(), model, store.job_dir(j.key))
            _record(store, j, result, outcome, bar, executor="local")
        bar.update(running=0)


# ---------------------------------------------------------------------------------------
# ray


class _ModelWorker:
    """A Ray actor: loads one model once (on first use) and runs jobs on it."""

    def __init__(self, model: dict, device: str):
        self.model_entry = model
        self.device = device
        self.model = None

    def pid(self) -> int:
        return os.getpid()

    def run(self, desc: dict) -> dict:
        import shutil
        import tempfile

        from mechscope.sweeps.execute import read_folder
        from mechscope.sweeps.spec import ModelEntry

        start = time.perf_counter()
        if self.model is None:
            try:
                self.model = load_model(ModelEntry(**self.model_entry), self.device)
            except Exception as exc:  # noqa: BLE001
                return {"event": "failed", "error": error_line(exc), "seconds": time.perf_counter() - start}
        tmp = Path(tempfile.mkdtemp(prefix="mechscope-sweep-"))
        try:
            out = run_and_save(desc, self.model, tmp / "result")
            if out["event"] == "done":
                out["files"] = read_folder(tmp / "result")
            return out
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _ray():
    try:
        import ray
    except ImportError:
        from mechscope.probes.errors import MissingPackageError

        raise MissingPackageError("The ray executor needs Ray: pip install 'mechscope[ray]'.") from None
    return ray


def _run_ray(store: SweepStore, todo: list[Job], device: str, outcome: Outcome, bar: _Bar, *, address, gpus_per_actor,
             actors, cpus_per_actor, max_retries) -> None:
    ray = _ray()
    from ray.exceptions import RayActorError

    started_here = False
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(**kwargs)
        started_here = True
    if gpus_per_actor > 0 and device == "cpu":
        device = "cuda"
    worker_cls = ray.remote(_ModelWorker)
    queues: dict[str, list[Job]] = {}
    for j in todo:
        queues.setdefault(j.model.name, []).append(j)
    entries = {j.model.name: j.model.to_dict() for j in todo}
    attempts: dict[str, int] = {}
    resources = ray.cluster_resources()
    for what, need in (("GPU", gpus_per_actor), ("CPU", cpus_per_actor)):
        if need > resources.get(what, 0):
            if started_here:
                ray.shutdown()
            raise InputError(f"Each actor asks for {need:g} {what}(s) but the Ray cluster has "
                             f"{resources.get(what, 0):g}.")

    def new_actor(model_name: str):
        handle = worker_cls.options(num_gpus=gpus_per_actor, num_cpus=cpus_per_actor, max_restarts=0,
                                    max_task_retries=0).remote(entries[model_name], device)
        return {"model": model_name, "handle": handle, "pid": None, "job": None, "ref": None}

    pool = [new_actor(m) for m in queues for _ in range(min(actors, len(queues[m])))]
    in_flight: dict = {}  # ObjectRef -> actor state
    early_deaths: dict[str, int] = {}  # model -> actors that died before taking a job
    try:
        while True:
            for a in pool:
                if a["ref"] is None and queues[a["model"]]:
                    job = queues[a["model"]].pop(0)
                    if a["pid"] is None:
                        try:
                            a["pid"] = ray.get(a["handle"].pid.remote())
                        except RayActorError:
                            queues[a["model"]].insert(0, job)
                            a["dead"] = True
                            continue
                    store.append({"event": "started", "key": job.key, "worker": a["pid"], "executor": "ray",
                                  "attempt": attempts.get(job.key, 0) + 1})
                    a["job"], a["ref"] = job, a["handle"].run.remote(job.describe())
                    in_flight[a["ref"]] = a
            for a in [a for a in pool if a.get("dead")]:  # died before taking a job: replace it
                pool.remove(a)
                m = a["model"]
                early_deaths[m] = early_deaths.get(m, 0) + 1
                if early_deaths[m] > max_retries + actors:  # its actors cannot start: fail its jobs
                    for job in queues[m]:
                        _record(store, job, {"event": "failed", "seconds": 0.0,
                                             "error": f"no actor for {m} could start ({early_deaths[m]} tried)"},
                                outcome, bar, executor="ray")
                    queues[m] = []
                elif queues[m]:
                    pool.append(new_actor(m))
            bar.update(running=len(in_flight))
            if not in_flight:
                if any(queues.values()) and pool:
                    continue
                break
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            for ref in ready:
                a = in_flight.pop(ref)
                job, a["ref"], a["job"] = a["job"], None, None
                try:
                    result = ray.get(ref)
                except RayActorError as exc:
                    attempts[job.key] = attempts.get(job.key, 0) + 1
                    pool.remove(a)
                    if attempts[job.key] > max_retries:
                        _record(store, job, {"event": "failed", "seconds": 0.0,
                                             "error": f"worker died {attempts[job.key]} time(s): {error_line(exc)}"},
                                outcome, bar, executor="ray")
                    else:
                        queues[job.model.name].insert(0, job)
                    if queues[job.model.name]:
                        pool.append(new_actor(job.model.name))
                    continue
                files = result.pop("files", None)
                if result["event"] == "done":
                    try:
                        write_folder(files, store.job_dir(job.key))
                    except (OSError, ValueError, InputError) as exc:
                        result = {"event": "failed", "error": error_line(exc), "seconds": result["seconds"]}
                _record(store, job, result, outcome, bar, executor="ray", worker=a["pid"])
    finally:
        for a in pool:
            try:
                ray.kill(a["handle"])
            except Exception:  # noqa: BLE001
                pass
        if started_here:
            ray.shutdown()
