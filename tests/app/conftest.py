"""Page tests run their analyses in the foreground (an estimate depends on the machine's load);
the background-run tests set the threshold themselves."""

import pytest


@pytest.fixture(autouse=True)
def _foreground_runs(monkeypatch):
    from mechscope.app import ui

    monkeypatch.setattr(ui, "BACKGROUND_AFTER_S", float("inf"))
