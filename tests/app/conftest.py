"""Page tests run their analyses in the foreground (an estimate depends on the machine's load);
the background-run tests set the threshold themselves."""

import pytest


@pytest.fixture(autouse=True)
def _foreground_runs(monkeypatch):
    from mechscope.app import ui

    monkeypatch.setattr(ui, "BACKGROUND_AFTER_S", float("inf"))


# --- real-browser tests (tests/app/browser.py): one server and one Chromium per module --------


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """The dashboard served by ``streamlit run`` for this module (``SERVER_ENV`` of the module
    adds environment variables)."""
    from tests.app.browser import start_server

    tmp = tmp_path_factory.mktemp("server")
    yield from start_server(tmp, getattr(request.module, "SERVER_ENV", None))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    from tests.app.browser import launch

    with sync_playwright() as pw:
        b = launch(pw)
        try:
            yield b
        finally:
            b.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def page(request, browser, tmp_path):
    """A fresh browser session (context) with one page. When the test fails, the page's URL,
    script state and text are printed and its screenshot saved (the failure report shows
    where)."""
    from tests.app.browser import VIEWPORT, describe_page

    ctx = browser.new_context(viewport=VIEWPORT)
    try:
        pg = ctx.new_page()
        yield pg
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            print(describe_page(pg, tmp_path / "failure.png"))
    finally:
        ctx.close()


@pytest.fixture
def shots(tmp_path):
    """Where screenshots go: ``$MECHSCOPE_SCREENSHOTS`` if set, else the test's tmp dir."""
    import os
    from pathlib import Path

    d = Path(os.environ.get("MECHSCOPE_SCREENSHOTS") or tmp_path / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d
