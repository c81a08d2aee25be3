"""The Sweeps page (AppTest): a sweep folder's table, figures and one job's result. The
sidebar's model loader is stubbed: the page runs no model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sweeps.helpers import spec_text, write_spec

APP = Path(__file__).resolve().parents[2] / "app"


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    from mechscope.sweeps import build_report, load_spec, run_sweep

    tmp = tmp_path_factory.mktemp("sweep")
    out = tmp / "out"
    run_sweep(load_spec(write_spec(tmp / "spec.toml", spec_text())), out, show_progress=False)
    build_report(out)
    return out


def _page(monkeypatch, folder: str):
    from streamlit.testing.v1 import AppTest

    from mechscope.app import ui

    monkeypatch.setattr(ui, "sidebar_model", lambda: (None, None))
    at = AppTest.from_file(str(APP / "pages" / "70_sweeps.py"), default_timeout=120)
    at.run()
    at.text_input(key="sw_dir").set_value(folder).run()
    return at


def test_sweeps_page_shows_table_figures_and_a_job(monkeypatch, sweep_dir):
    from mechscope.analyses.catalog import load_result
    from mechscope.sweeps.report import report_table

    at = _page(monkeypatch, str(sweep_dir))
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert [m.value for m in at.metric] == ["8", "6", "2", "0", "0"]
    frame = at.dataframe[0].value
    assert len(frame) == 8 and set(frame.status) == {"done", "failed"}
    charts = at.get("plotly_chart")
    assert len(charts) >= 2  # comparison figures, then the chosen job's figures
    job = at.selectbox(key="sw_job")
    expected = report_table(sweep_dir)
    assert len(job.options) == 6
    first = expected[expected.status == "done"].key.iloc[0]
    assert job.value == first
    shown = at.dataframe[1].value
    assert shown.equals(load_result(sweep_dir / "jobs" / first).to_frame())
    # filters: one model only
    at.multiselect(key="sw_model").set_value(["tiny-b"]).run()
    assert set(at.dataframe[0].value.model) == {"tiny-b"}


def test_sweeps_page_refuses_a_foreign_folder(monkeypatch, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    at = _page(monkeypatch, str(tmp_path))
    assert not at.exception and at.error and "not a sweep folder" in at.error[0].value
