"""Sweeps on the local executor: content keys, resume, failures, bad specs, the report, the
background-run API. Tiny models from tests/tiny.py, named by loader in the specs."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from tests.sweeps.helpers import ROOT, comparable, env, final_state, spec_text, write_spec


def _spec(tmp_path, name="spec.toml", **kw):
    from mechscope.sweeps import load_spec

    return load_spec(write_spec(tmp_path / name, spec_text(**kw)))


# ---------------------------------------------------------------------------------------
# keys


def test_keys_are_content_keys(tmp_path, monkeypatch):
    spec = _spec(tmp_path, failing=False)
    jobs = spec.jobs()
    assert len(jobs) == 6 and len({j.key for j in jobs}) == 6  # 3 eps x 2 models
    # the same spec written with its keys in another order gives the same keys
    reordered = spec_text(failing=False).replace('variants = ["no_bos"], k_max = 4', 'k_max = 4, variants = ["no_bos"]')
    from mechscope.sweeps import load_spec

    again = load_spec(write_spec(tmp_path / "b.toml", reordered))
    assert [j.key for j in again.jobs()] == [j.key for j in jobs]
    # explicit defaults are the same job as implicit ones: the key covers every Params field
    explicit = spec_text(failing=False).replace("min_queries = 2", "min_queries = 2, eps = 0.3, batch_size = 16")
    explicit = explicit.replace("grid = { eps = [0.1, 0.2, 0.3] }", "")
    e = load_spec(write_spec(tmp_path / "c.toml", explicit)).jobs()
    assert {j.key for j in e} == {j.key for j in jobs if j.params.eps == 0.3}
    # one changed parameter changes only the keys of the jobs it touches
    changed = _spec(tmp_path, name="d.toml", eps=(0.1, 0.2, 0.4), failing=False).jobs()
    same = {j.key for j in jobs} & {j.key for j in changed}
    assert same == {j.key for j in jobs if j.params.eps != 0.3}
    # the two models differ only in their weights (seed): their digests and keys differ
    a, b = jobs[0], jobs[1]
    assert a.params == b.params and a.weights != b.weights and a.key != b.key
    # the mechscope version is part of the key
    import mechscope

    monkeypatch.setattr(mechscope, "__version__", "9.9.9")
    assert not {j.key for j in spec.jobs()} & {j.key for j in jobs}


def test_weights_digest_is_the_sha256_of_the_parameters():
    import hashlib

    import torch

    from mechscope.sweeps.jobs import state_digest
    from tests.tiny import tiny_model

    m = tiny_model(seed=0)
    h = hashlib.sha256()
    for name, t in sorted(m.state_dict().items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.detach().contiguous().numpy().tobytes() if t.numel() else b"")
    assert state_digest(m) == h.hexdigest()
    with torch.no_grad():
        m.blocks[0].attn.W_Q[0, 0, 0] += 1e-3
    assert state_digest(m) != h.hexdigest()


# ---------------------------------------------------------------------------------------
# running, resuming, failures


def test_run_again_runs_only_missing_or_failed_jobs(tmp_path):
    from mechscope.sweeps import run_sweep
    from mechscope.sweeps.store import SweepStore

    out = tmp_path / "out"
    first = run_sweep(_spec(tmp_path), out, show_progress=False)
    assert (first.total, first.skipped, first.done, first.failed) == (8, 0, 6, 2)
    # the always-failing job is reported with its error and the others finished
    assert all("fewer than k = 6" in e for e in first.errors.values())
    store = SweepStore(out)
    n_lines = len(store.events())
    again = run_sweep(_spec(tmp_path), out, show_progress=False)
    assert (again.skipped, again.done, again.failed) == (6, 0, 2)  # only the failed ones ran again
    started = [e for e in store.events()[n_lines:] if e["event"] == "started"]
    assert sorted(e["key"] for e in started) == sorted(first.errors)
    changed = run_sweep(_spec(tmp_path, name="b.toml", eps=(0.1, 0.2, 0.4), failing=False), out, show_progress=False)
    assert (changed.total, changed.skipped, changed.done, changed.failed) == (6, 4, 2, 0)
    # every done job is a saved Result that re-runs to the same table
    from mechscope.analyses.catalog import load_result
    from mechscope.sweeps.jobs import _custom

    for key, e in store.latest().items():
        if e["event"] == "done":
            res = load_result(store.job_dir(key))
            model = _custom(f"tests.sweeps.models:{e['model'].replace('-', '_')}", "cpu")
            pd.testing.assert_frame_equal(res.rerun(model).to_frame(), res.to_frame())


def test_lost_done_line_is_recovered_without_running(tmp_path):
    from mechscope.sweeps import run_sweep
    from mechscope.sweeps.store import INDEX, SweepStore

    out = tmp_path / "out"
    run_sweep(_spec(tmp_path, failing=False), out, show_progress=False)
    index = out / INDEX
    lines = index.read_text().splitlines()
    last_done = max(i for i, ln in enumerate(lines) if json.loads(ln)["event"] == "done")
    key = json.loads(lines[last_done])["key"]
    # a crash after the Result was renamed into place but before its line was complete
    index.write_text("\n".join(lines[:last_done]) + "\n" + lines[last_done][:25])
    assert key not in SweepStore(out).latest()
    again = run_sweep(_spec(tmp_path, failing=False), out, show_progress=False)
    assert (again.skipped, again.done) == (6, 0)
    assert SweepStore(out).latest()[key].get("recovered") is True


def _wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_resume_after_the_driver_is_killed(tmp_path, sig):
    """Kill the CLI part-way (a crash, or Ctrl-C); run again: only the missing jobs run and
    the final index equals an uninterrupted run's."""
    from mechscope.sweeps import run_sweep
    from mechscope.sweeps.report import report_table
    from mechscope.sweeps.store import SweepStore

    text = spec_text(models="slow_tiny", eps=(0.05, 0.1, 0.15, 0.2, 0.25, 0.3), failing=False)
    spec_path = write_spec(tmp_path / "spec.toml", text)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "mechscope.app.cli", "sweep", "run", str(spec_path), "--out",
                             str(out), "--no-report"], cwd=ROOT, env={**env(), "MECHSCOPE_TEST_SLOW": "0.4"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ok = _wait_for(lambda: sum(e["event"] == "done" for e in SweepStore(out).events()) >= 2, 180)
        assert ok, proc.stderr.read().decode() if proc.poll() is not None else "no job finished"
        proc.send_signal(sig)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    store = SweepStore(out)
    done_before = {k for k, e in store.latest().items() if e["event"] == "done"}
    assert 2 <= len(done_before) < 6
    n = len(store.events())
    from mechscope.sweeps import load_spec

    resumed = run_sweep(load_spec(spec_path), out, show_progress=False)
    assert resumed.skipped == len(done_before) and resumed.done == 6 - len(done_before)
    ran = {e["key"] for e in store.events()[n:] if e["event"] == "started"}
    assert ran == {j.key for j in load_spec(spec_path).jobs()} - done_before
    clean = tmp_path / "clean"
    run_sweep(load_spec(spec_path), clean, show_progress=False)
    assert final_state(SweepStore(out)) == final_state(SweepStore(clean))
    pd.testing.assert_frame_equal(comparable(report_table(out)), comparable(report_table(clean)))


# ---------------------------------------------------------------------------------------
# bad specs and folders: one line, nothing runs, nothing written


@pytest.mark.parametrize("change, message", [
    (lambda t: t.replace('kind = "sinks"', 'kind = "sinkz"'), "unknown analysis 'sinkz'"),
    (lambda t: t.replace("k_max = 4", "k_max = 4, kmax = 3"), "SinkParams has no field(s) kmax"),
    (lambda t: t.replace("k_max = 4", 'k_max = "four"'), "k_max = 'four' has the wrong type: expected int"),
    (lambda t: t.replace("grid = { eps = [0.1, 0.2, 0.3] }", 'grid = { eps = [0.1, "x"] }'), "eps = 'x' has the wrong type"),
    (lambda t: t.replace('models = [', 'models = ["no-such-model", '), "Unknown model 'no-such-model'"),
    (lambda t: t.replace("tests.sweeps.models:tiny_b", "tests.sweeps.models:nope"), "cannot import its loader"),
    (lambda t: t + "\n[texts]\nshards = 2\nshard_size = 3\n", "one of shards"),
    (lambda t: t.replace('name = "tiny"', 'nam = "tiny"'), "Unknown key(s) in the sweep spec: nam"),
])
def test_bad_spec_is_one_line_before_anything_runs(tmp_path, capsys, change, message):
    from mechscope.app.cli import main

    spec = write_spec(tmp_path / "spec.toml", change(spec_text()))
    out = tmp_path / "out"
    rc = main(["sweep", "run", str(spec), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    from mechscope.app.cli import main

    spec = write_spec(tmp_path / "spec.toml", spec_text())
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["sweep", "run", str(spec), "--out", str(out)]) == 2
    assert "no sweep wrote" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    file_out = tmp_path / "a-file"
    file_out.write_text("x")
    assert main(["sweep", "run", str(spec), "--out", str(file_out)]) == 2 and file_out.read_text() == "x"
    assert main(["sweep", "status", str(out)]) == 2


# ---------------------------------------------------------------------------------------
# shards, metrics, report, CLI


def test_text_shards_split_the_set_in_order(tmp_path):
    from mechscope.probes.texts import select_texts
    from mechscope.sweeps import parse_spec

    data = {"models": [{"name": "tiny-a", "loader": "tests.sweeps.models:tiny_a"}],
            "texts": {"text_set": "mixed", "n_texts": 10, "shards": 3},
            "analysis": [{"kind": "sinks", "shard_texts": True, "params": {"variants": ["no_bos"]}}]}
    jobs = parse_spec(data).jobs()
    assert [j.inputs["shard"] for j in jobs] == [0, 1, 2]
    expected = select_texts(None, "mixed", 10)
    got = [t for j in jobs for t in j.params.selected()]
    assert len(got) == 10
    # each shard holds a contiguous run of the set (grouped by domain within the shard)
    bounds = [0, 3, 7, 10]
    for j, a, b in zip(jobs, bounds, bounds[1:]):
        assert sorted(t.text for t in j.params.selected()) == sorted(t.text for t in expected[a:b])
        assert {t.domain for t in j.params.selected()} == {t.domain for t in expected[a:b]}


def test_metrics_of_a_hand_built_result():
    from mechscope.probes.results import Params, Result
    from mechscope.sweeps.metrics import result_metrics

    @dataclasses.dataclass(frozen=True)
    class P(Params):
        alpha: float = 0.5

    @dataclasses.dataclass(frozen=True)
    class R(Result):
        score: float = 0.0
        flag: bool = False
        values: np.ndarray = None
        kind = "test_sweep_metrics_r"

        def to_frame(self):
            return pd.DataFrame({"layer": [0, 1, 2], "alpha": [9.0, 9.0, 9.0], "x": [1.0, 2.0, 6.0],
                                 "name": ["a", "b", "c"]})

    r = R("m", P(), score=np.float32(0.25), flag=np.bool_(True), values=np.arange(3))
    assert result_metrics(r) == {"score": 0.25, "flag": True, "mean_x": 3.0}


def test_report_table_and_figures(tmp_path, capsys):
    from mechscope.app.cli import main
    from mechscope.sweeps.report import report_table

    spec = write_spec(tmp_path / "spec.toml", spec_text())
    out = tmp_path / "out"
    assert main(["sweep", "run", str(spec), "--out", str(out)]) == 1  # a job failed
    assert main(["sweep", "status", str(out)]) == 0
    status = capsys.readouterr().out
    assert "8 jobs: 6 done, 2 failed, 0 started and not finished, 0 pending" in status
    table = pd.read_parquet(out / "report" / "table.parquet")
    csv = pd.read_csv(out / "report" / "table.csv")
    assert len(table) == len(csv) == 8 and list(table.columns) == list(csv.columns)
    assert sorted(table.status) == ["done"] * 6 + ["failed"] * 2
    failed = table[table.status == "failed"]
    assert failed.error.str.contains("fewer than k = 6").all() and failed["metric.sink_rate_k1_no_bos"].isna().all()
    # the headline metric is Gu et al.'s Sink_1^eps of the saved result
    from mechscope.analyses.catalog import load_result

    for _, row in table[table.status == "done"].iterrows():
        res = load_result(out / "jobs" / row["key"])
        alpha1 = np.asarray(res.alpha[0, ..., 0], dtype=np.float64)  # primary variant, k = 1
        expected = 100 * np.mean(alpha1[~np.isnan(alpha1)] > res.params.eps)
        assert row["metric.sink_rate_k1_no_bos"] == pytest.approx(expected, rel=1e-12)
        assert row["param.eps"] == res.params.eps and row["model"] in ("tiny-a", "tiny-b")
    html = sorted(p.name for p in (out / "report").glob("*.html"))
    assert "sinks__sink_rate_k1_no_bos_by_eps.html" in html
    pd.testing.assert_frame_equal(report_table(out), table, check_dtype=False)


# ---------------------------------------------------------------------------------------
# background runs


def test_background_run_saves_a_loadable_result(tmp_path):
    from mechscope.analyses.sinks import SinkParams, attention_sinks
    from mechscope.sweeps import background
    from tests.tiny import tiny_model

    model = tiny_model()
    params = SinkParams(texts=[[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11]], variants=("no_bos",), k_max=3, min_queries=2)
    h = background.submit("sinks", params, out_dir=tmp_path / "runs", model=model)
    assert h.wait(60) == "done" and h.progress == 1.0
    pd.testing.assert_frame_equal(h.result().to_frame(), attention_sinks(model, params).to_frame())
    from mechscope import load_result

    assert load_result(h.directory).params == params
    runs = background.recent_runs(tmp_path / "runs")
    assert [(r["run"], r["status"]) for r in runs] == [(h.run_id, "done")]
    bad = background.submit("sinks", {"texts": [[1, 2]], "variants": ["no_bos"], "k_max": 5},
                            out_dir=tmp_path / "runs", model=model)
    assert bad.wait(60) == "failed" and "fewer than k" in bad.error
    with pytest.raises(Exception, match="Unknown analysis"):
        background.submit("nope", None, out_dir=tmp_path / "runs", model=model)


def test_background_cancel_stops_the_work(tmp_path, monkeypatch):
    from mechscope.analyses.sinks import SinkParams
    from mechscope.sweeps import background
    from tests.sweeps.models import slow_tiny

    monkeypatch.setenv("MECHSCOPE_TEST_SLOW", "0.2")
    model = slow_tiny()
    calls = []
    forward = model.forward
    model.forward = lambda *a, **k: (calls.append(1), forward(*a, **k))[1]
    texts = [[i + 1, i + 2, i + 3, i + 4] for i in range(40)]
    params = SinkParams(texts=texts, variants=("no_bos",), k_max=2, batch_size=1)
    h = background.submit("sinks", params, out_dir=tmp_path / "runs", model=model)
    assert _wait_for(lambda: h.progress > 0, 30)
    h.cancel()
    assert h.wait(30) == "cancelled"
    n = len(calls)
    assert n < 40 and not h.directory.exists()
    time.sleep(0.5)
    assert len(calls) == n  # nothing runs after the cancel
    assert background.recent_runs(tmp_path / "runs")[0]["status"] == "cancelled"


def test_recent_runs_survive_a_restart(tmp_path):
    """A run recorded by a process that has ended: listed, and shown interrupted if it never
    finished."""
    from mechscope.sweeps import background

    code = ("from mechscope.sweeps import background; from tests.tiny import tiny_model; "
            f"h = background.submit('sinks', {{'texts': [[1,2,3,4]], 'variants': ['no_bos'], 'k_max': 2}}, "
            f"out_dir=r'{tmp_path / 'runs'}', model=tiny_model()); print(h.wait(60))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert done.stdout.strip().endswith("done"), done.stderr
    # a run whose process died before it finished
    with open(tmp_path / "runs" / background.RUNS_INDEX, "a") as f:
        f.write(json.dumps({"event": "submitted", "run": "zz-lost", "kind": "sinks", "model": "m", "time": 1e12,
                            "pid": 2 ** 22 + 12345}) + "\n")
    runs = background.recent_runs(tmp_path / "runs")
    assert [r["status"] for r in runs] == ["interrupted", "done"]
    from mechscope import load_result

    assert load_result(runs[1]["directory"]).kind == "sinks"


def test_the_documented_spec_parses_to_the_documented_jobs():
    import re
    import tomllib

    from mechscope.sweeps import parse_spec

    doc = (ROOT / "docs" / "sweeps.md").read_text()
    data = tomllib.loads(re.search(r"```toml\n(.*?)```", doc, re.S).group(1))
    assert data["models"] == ["smollm2-135m", "gemma-3-270m"]
    data["models"] = [{"name": "tiny-a", "loader": "tests.sweeps.models:tiny_a"}]  # gemma may not be installed
    jobs = parse_spec(data).jobs()
    sinks = [j for j in jobs if j.kind == "sinks"]
    assert len(sinks) == 24  # 3 eps x 2 k_max x 4 shards, one model
    assert {(j.params.eps, j.params.k_max) for j in sinks} == {(e, k) for e in (0.1, 0.3, 0.5) for k in (4, 8)}
    assert [len(j.params.selected()) for j in sinks[:4]] == [16] * 4
    nt = [j for j in jobs if j.kind == "next_token"]
    assert [(j.model.name, j.params.prompt, j.params.k) for j in nt] == [
        ("smollm2-135m", "The capital of France is", nt[0].params.k), ("smollm2-135m", "2 + 2 =", 3)]


def test_bad_executor_options_are_refused_before_anything_runs(tmp_path):
    from mechscope.probes.errors import InputError
    from mechscope.sweeps import run_sweep

    spec = _spec(tmp_path)
    out = tmp_path / "out"
    for kw, msg in [({"executor": "ray", "device": "cuda"}, "needs --gpus-per-actor"),
                    ({"executor": "ray", "actors": 0}, "at least 1"),
                    ({"executor": "dask"}, "Unknown executor"),
                    ({"executor": "ray", "gpus_per_actor": -1.0}, "cannot be negative")]:
        with pytest.raises(InputError, match=msg):
            run_sweep(spec, out, show_progress=False, **kw)
        assert not out.exists()


def test_figures_plot_each_metric_by_each_varied_parameter_averaged_over_shards():
    from mechscope.sweeps.report import figures

    rows = []
    for model, offset in (("a", 0.0), ("b", 10.0)):
        for eps in (0.1, 0.3):
            for shard, v in ((0, 1.0), (1, 3.0)):
                rows.append({"key": f"{model}{eps}{shard}", "status": "done", "kind": "sinks", "model": model,
                             "shard": shard, "param.eps": eps, "metric.rate": offset + v + eps})
    rows.append({"key": "x", "status": "failed", "kind": "sinks", "model": "a", "shard": 0, "param.eps": 0.5,
                 "metric.rate": None})
    figs = figures(pd.DataFrame(rows))
    assert list(figs) == ["sinks: rate by eps"]
    lines = {tr.name: (list(tr.x), list(tr.y)) for tr in figs["sinks: rate by eps"].data}
    assert lines["a"][0] == [0.1, 0.3] and lines["a"][1] == pytest.approx([2.1, 2.3])  # mean of shards 1 and 3
    assert lines["b"][1] == pytest.approx([12.1, 12.3])
