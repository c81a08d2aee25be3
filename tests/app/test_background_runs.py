"""Background runs from pages (AppTest): a run estimated over the threshold goes to
``sweeps.background``, the page shows its progress and then its result exactly as a
foreground one; the run is listed in the sidebar and a ``?run=`` link reopens it in its page
in a new session; the forms show the estimate."""

import time
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"


def _settle(at, key: str, timeout: float = 240.0):
    """Rerun until the background run of session memo ``key`` is no longer running."""
    from mechscope.app import ui

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not ui.any_running():
            return at.run()
        time.sleep(0.5)
    raise AssertionError("the background run did not finish")


@pytest.mark.integration
def test_background_run_shows_its_result_in_its_page_and_reopens(smollm2, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from mechscope.app import ui
    from mechscope.sweeps.background import recent_runs

    monkeypatch.setenv("MECHSCOPE_RESULTS", str(tmp_path))
    monkeypatch.setattr(ui, "BACKGROUND_AFTER_S", 0.0)  # every run with a cost formula goes to the background
    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/30_isotropy.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("on this machine" in c.value and "model calls" in c.value for c in at.caption)
    at.number_input(key="iso_n_texts").set_value(3)
    at.number_input(key="iso_max_tokens").set_value(12)
    at.number_input(key="iso_n_sample").set_value(20)
    at.checkbox(key="iso_heads").set_value(False)
    at.button(key="iso_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    (run,) = recent_runs(ui.runs_dir())
    assert run["kind"] == "isotropy" and Path(run["directory"]).parent == tmp_path / "runs"
    at = _settle(at, "isotropy")
    assert not at.exception and not at.error, [e.value for e in at.error]
    labels = [m.label for m in at.metric]
    assert "IsoScore, last layer" in labels  # the page's own rendering of the result
    (run,) = recent_runs(ui.runs_dir())
    assert run["status"] == "done"
    shown = at.session_state["memo_isotropy"][1]
    assert type(shown).__name__ == "IsotropyResult" and shown.params.n_texts == 3
    assert f"sidebar_runs_open_{run['run']}" in [b.key for b in at.sidebar.button]  # "Recent runs" lists it

    # a new session (a reload) opened by the link: the form takes the run's parameters and
    # the page shows the finished run's result without running anything
    ui._live_runs().clear()  # as after a server restart: only the disk knows the run
    at2 = AppTest.from_file(str(APP / "Home.py"), default_timeout=300)
    at2.query_params["run"] = run["run"]
    at2.run()
    at2.switch_page("pages/30_isotropy.py").run()
    assert not at2.exception, [e.value for e in at2.exception]
    assert at2.number_input(key="iso_n_texts").value == 3
    assert "IsoScore, last layer" in [m.label for m in at2.metric]
    assert not recent_runs(ui.runs_dir())[1:]  # nothing new was run


@pytest.mark.integration
def test_background_run_cancel(smollm2, tmp_path, monkeypatch):
    """Cancel stops a background run at its next progress report; the page then says so."""
    from streamlit.testing.v1 import AppTest

    from mechscope.app import ui
    from mechscope.sweeps.background import recent_runs

    monkeypatch.setenv("MECHSCOPE_RESULTS", str(tmp_path))
    monkeypatch.setattr(ui, "BACKGROUND_AFTER_S", 0.0)
    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/30_isotropy.py").run()
    at.number_input(key="iso_n_texts").set_value(40)
    at.number_input(key="iso_max_tokens").set_value(64)
    at.number_input(key="iso_n_sample").set_value(20)
    at.button(key="iso_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    (run,) = recent_runs(ui.runs_dir())
    cancel = [b for b in at.button if b.key == f"bg_cancel_{run['run']}"]
    assert cancel, "a running background run has a Cancel button"
    cancel[0].click().run()
    at = _settle(at, "isotropy")
    assert not at.exception, [e.value for e in at.exception]
    (run,) = recent_runs(ui.runs_dir())
    assert run["status"] == "cancelled"
    assert any("was cancelled" in c.value for c in at.caption)
    assert "IsoScore, last layer" not in [m.label for m in at.metric]


def test_heavy_analyses_without_a_formula_go_to_the_background_unestimated(tiny, monkeypatch):
    from mechscope.analyses.circuits import CircuitCompareParams
    from mechscope.analyses.isotropy import IsotropyParams
    from mechscope.app import ui

    monkeypatch.setattr(ui, "BACKGROUND_AFTER_S", 20.0)
    assert ui.estimate(CircuitCompareParams(), tiny) is None
    assert ui.estimate_line(CircuitCompareParams(), tiny).endswith("runs in the background")
    assert ui._heavy_without_formula(CircuitCompareParams()) and not ui._heavy_without_formula(IsotropyParams())
    monkeypatch.setattr(ui, "BACKGROUND_AFTER_S", float("inf"))  # background runs off (as in the AppTests)
    assert ui.estimate_line(CircuitCompareParams(), tiny) is None


def test_a_finished_run_does_not_undo_a_page_switch_queued_meanwhile(monkeypatch):
    """The progress panel reruns the page when its run ends; if the user has just chosen
    another page (a rerun is queued), it does not: Streamlit gives coalesced requests the page
    of the later one, so its rerun would take the user back (with the form at its defaults)."""
    from types import SimpleNamespace

    import streamlit.runtime.scriptrunner as scriptrunner
    from streamlit.runtime.scriptrunner_utils.script_requests import RerunData, ScriptRequests

    from mechscope.app import ui

    def queued_page_switch() -> ScriptRequests:
        requests = ScriptRequests()
        requests.request_rerun(RerunData(page_script_hash="next_token"))  # the user's click
        return requests

    coalesced = queued_page_switch()
    coalesced.request_rerun(RerunData(page_script_hash="attention_sinks"))  # what st.rerun() would add
    assert coalesced.on_scriptrunner_yield().rerun_data.page_script_hash == "attention_sinks"

    requests = queued_page_switch()
    monkeypatch.setattr(scriptrunner, "get_script_run_ctx", lambda: SimpleNamespace(script_requests=requests))
    monkeypatch.setattr(ui, "live_handle", lambda rid: SimpleNamespace(done=lambda: True))
    reruns, stops = [], []
    monkeypatch.setattr(ui.st, "rerun", lambda *a, **k: reruns.append(a))
    monkeypatch.setattr(ui.st, "stop", lambda: stops.append(1))
    ui._run_panel_body("r1")
    assert reruns == [] and stops == [1]
    assert requests.on_scriptrunner_yield().rerun_data.page_script_hash == "next_token"  # the switch happens
    ui._run_panel_body("r1")  # nothing queued: the page reruns to show the result
    assert reruns == [()] and stops == [1]
