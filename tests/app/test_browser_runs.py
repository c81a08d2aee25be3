"""Real-browser tests of background runs (headless Chromium, as tests/app/test_browser.py):
a run started on a page keeps running while the user goes to another page and reloads, is
listed in the sidebar's "Recent runs" with a link back to its page, and stops on Cancel.
The server runs with ``MECHSCOPE_BACKGROUND_AFTER_S=0`` (every run with a cost formula goes
to the background) and its runs folder in the test's tmp dir."""

import pytest

from tests.app.test_browser import CHROMIUM, CHROMIUM_ARGS, LOAD_TIMEOUT_MS, server, shots  # noqa: F401

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium"),
]


@pytest.fixture
def bg_server(tmp_path, monkeypatch, request):
    monkeypatch.setenv("MECHSCOPE_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MECHSCOPE_BACKGROUND_AFTER_S", "0")
    return request.getfixturevalue("server")


def _set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")


def test_background_run_survives_navigation_and_reload_then_cancels(bg_server, shots, tmp_path):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    from mechscope.sweeps.background import recent_runs

    server = bg_server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{server}/isotropy")
            run_button = page.get_by_role("button", name="Compute isotropy")
            expect(run_button).to_be_visible(timeout=LOAD_TIMEOUT_MS)
            expect(page.get_by_text("on this machine").first).to_be_visible()  # the estimate under the form
            _set_number(page, "Texts", 64)  # long enough to outlive the navigation below
            _set_number(page, "Tokens per text", 128)
            page.wait_for_timeout(500)
            run_button.click()
            expect(page.get_by_text("Background run").first).to_be_visible(timeout=60_000)
            expect(page.get_by_role("button", name="Cancel")).to_be_visible()
            page.screenshot(path=str(shots / "run_started.png"))

            page.goto(f"{server}/next_token")  # another page: the run goes on and is listed
            sidebar = page.locator('[data-testid="stSidebar"]')
            expect(sidebar.get_by_text("Recent runs")).to_be_visible(timeout=LOAD_TIMEOUT_MS)
            expect(sidebar.get_by_role("button").filter(has_text="isotropy").first).to_be_visible()
            page.reload()  # a reload is a new session: the list comes from the runs folder
            link = page.locator('[data-testid="stSidebar"]').get_by_role("button").filter(has_text="isotropy").first
            expect(link).to_be_visible(timeout=LOAD_TIMEOUT_MS)
            (run,) = recent_runs(tmp_path / "results" / "runs")
            assert run["status"] == "running"
            page.goto(f"{server}/isotropy?run={run['run']}")  # its link: back in its page, on its parameters
            expect(page.get_by_text("Background run").first).to_be_visible(timeout=LOAD_TIMEOUT_MS)
            expect(page.get_by_label("Texts", exact=True)).to_have_value("64")  # the run's parameters
            page.screenshot(path=str(shots / "run_reopened.png"))
            page.get_by_role("button", name="Cancel").click()
            expect(page.get_by_text("was cancelled").first).to_be_visible(timeout=60_000)
            assert page.locator('[data-testid="stException"]').count() == 0
            (run,) = recent_runs(tmp_path / "results" / "runs")
            assert run["status"] == "cancelled"
            page.screenshot(path=str(shots / "run_cancelled.png"))
        finally:
            browser.close()
