"""The Ray executor: the same tables as the local one, and a job whose worker is killed is
retried on another actor. One local Ray instance (2 CPUs) for the module."""

from __future__ import annotations

import os
import signal
import threading
import time

import pandas as pd
import pytest

from tests.sweeps.helpers import ROOT, comparable, final_state, spec_text, write_spec

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_instance():
    path = str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "MECHSCOPE_TEST_SLOW": "1.0",
                                       "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


def test_local_and_ray_give_identical_tables(tmp_path, ray_instance):
    from mechscope.analyses.catalog import load_result
    from mechscope.sweeps import load_spec, run_sweep
    from mechscope.sweeps.report import report_table
    from mechscope.sweeps.store import SweepStore

    spec = load_spec(write_spec(tmp_path / "spec.toml", spec_text()))
    local = run_sweep(spec, tmp_path / "local", show_progress=False)
    remote = run_sweep(spec, tmp_path / "ray", executor="ray", actors=1, show_progress=False)
    assert (remote.done, remote.failed) == (local.done, local.failed) == (6, 2)
    assert remote.errors == local.errors  # the always-failing job: its error, the others done
    pd.testing.assert_frame_equal(comparable(report_table(tmp_path / "ray")), comparable(report_table(tmp_path / "local")))
    assert final_state(SweepStore(tmp_path / "ray")) == final_state(SweepStore(tmp_path / "local"))
    workers = {e["worker"] for e in SweepStore(tmp_path / "ray").events() if e["event"] == "started"}
    assert os.getpid() not in workers and len(workers) == 2  # one actor per model, not the driver
    for key, e in SweepStore(tmp_path / "ray").latest().items():
        if e["event"] == "done":
            a, b = load_result(tmp_path / "ray" / "jobs" / key), load_result(tmp_path / "local" / "jobs" / key)
            pd.testing.assert_frame_equal(a.to_frame(), b.to_frame())


def _run_and_kill(tmp_path, max_retries: int):
    """Run a 3-job sweep on Ray in a thread; kill the worker of the first job to start while it
    runs. Returns (outcome, events, the killed job's started event, the job keys)."""
    from mechscope.sweeps import load_spec, run_sweep
    from mechscope.sweeps.store import SweepStore

    spec = load_spec(write_spec(tmp_path / "spec.toml", spec_text(models="slow_tiny", eps=(0.1, 0.2, 0.3), failing=False)))
    out = tmp_path / "out"
    box = {}
    t = threading.Thread(target=lambda: box.update(outcome=run_sweep(spec, out, executor="ray", max_retries=max_retries,
                                                                     show_progress=False)))
    t.start()
    victim = None
    end = time.monotonic() + 120
    while victim is None and time.monotonic() < end and t.is_alive():
        started = [e for e in SweepStore(out).events() if e["event"] == "started"] if out.exists() else []
        if started:
            victim = started[0]
        else:
            time.sleep(0.05)
    assert victim is not None, "no job started"
    time.sleep(0.3)  # inside the job's forward pass (1 s)
    os.kill(victim["worker"], signal.SIGKILL)
    t.join(180)
    assert not t.is_alive()
    return box["outcome"], SweepStore(out).events(), victim, [j.key for j in spec.jobs()]


def test_killed_worker_job_is_retried_on_another_actor(tmp_path, ray_instance):
    outcome, events, victim, keys = _run_and_kill(tmp_path, max_retries=1)
    assert (outcome.done, outcome.failed) == (3, 0)
    tries = [e for e in events if e["key"] == victim["key"] and e["event"] == "started"]
    assert [e["attempt"] for e in tries] == [1, 2] and tries[1]["worker"] != victim["worker"]
    done = [e for e in events if e["event"] == "done"]
    assert sorted(e["key"] for e in done) == sorted(keys)  # each job once


def test_a_job_out_of_retries_is_failed_and_the_others_finish(tmp_path, ray_instance):
    outcome, events, victim, keys = _run_and_kill(tmp_path, max_retries=0)
    assert (outcome.done, outcome.failed) == (2, 1)
    assert "worker died 1 time(s)" in outcome.errors[victim["key"]]
    done = {e["key"] for e in events if e["event"] == "done"}
    assert done == set(keys) - {victim["key"]}
