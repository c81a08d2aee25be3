"""One real-browser test: the dashboard served by ``streamlit run`` and driven by Playwright
in Debian's headless Chromium (/usr/bin/chromium; browser downloads do not work here).

Screenshots go to ``$MECHSCOPE_SCREENSHOTS`` if set, else to the test's tmp dir.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
LOAD_TIMEOUT_MS = 240_000  # the server loads the model on the first page view

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                       reason="no /usr/bin/chromium (in CI this test must run)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """``streamlit run app/Home.py`` on a free port; always stopped afterwards."""
    port = _free_port()
    log = open(tmp_path / "streamlit.log", "w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "Home.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}: {(tmp_path / 'streamlit.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("streamlit did not become healthy within 90 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        log.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    d = Path(os.environ.get("MECHSCOPE_SCREENSHOTS") or tmp_path / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_dashboard_in_chromium(server, shots):
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing (install Debian's chromium package)")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server)
            expect(page.get_by_role("heading", name="Two-minute tour")).to_be_visible(timeout=LOAD_TIMEOUT_MS)
            assert page.locator('[data-testid="stAppDeployButton"]').count() == 0  # a local tool: no deploy
            page.screenshot(path=str(shots / "front.png"), full_page=True)
            page.goto(f"{server}/next_token")
            prompt = page.get_by_role("textbox", name="Prompt", exact=True)
            expect(prompt).to_be_visible(timeout=LOAD_TIMEOUT_MS)  # appears once the model has loaded
            tokens = page.locator(".mechscope-token")
            prompt.fill("Hello world")
            prompt.press("Control+Enter")  # commit the text area: the page reruns
            expect(tokens.last).to_have_text("␣world", timeout=60_000)
            prompt.fill("The capital of France is")
            prompt.press("Control+Enter")
            expect(tokens.last).to_have_text("␣is", timeout=60_000)
            expect(tokens).to_have_text(["The", "␣capital", "␣of", "␣France", "␣is"])
            table = page.locator('[data-testid="stTable"]').first
            expect(table).to_contain_text("' Paris'", timeout=60_000)
            first_row = table.locator("tbody tr").first
            expect(first_row).to_contain_text("' Paris'")
            expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=60_000)
            expect(page.locator(".js-plotly-plot")).to_have_count(2, timeout=60_000)  # top-k bars + attention
            assert page.locator('[data-testid="stException"]').count() == 0
            page.screenshot(path=str(shots / "next_token.png"))
            page.locator(".js-plotly-plot").nth(1).scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "attention.png"))

            page.goto(f"{server}/playground")
            expect(page.get_by_role("heading", name="Intervened")).to_be_visible(timeout=LOAD_TIMEOUT_MS)
            expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=LOAD_TIMEOUT_MS)  # after 2 generations
            expect(page.locator(".mechscope-token").first).to_be_visible()
            assert page.locator('[data-testid="stException"]').count() == 0
            page.screenshot(path=str(shots / "playground.png"))
            page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "playground_delta_p.png"))
        finally:
            browser.close()


def _intervened_text(page) -> str:
    col = page.locator('[data-testid="stColumn"]').filter(
        has=page.get_by_role("heading", name="Intervened", exact=True)).last
    return " ".join(col.inner_text().split())


def test_two_users_generating_at_once_each_get_what_they_get_alone(server, shots, smollm2):
    """Two sessions open the Playground with different interventions (from links) at the same
    moment; each shows the continuation its interventions give when run alone."""
    import json
    import urllib.parse

    from playwright.sync_api import expect, sync_playwright

    from mechscope.analyses.playground import PlaygroundParams, compare_generations
    from mechscope.probes.interventions import HeadMask, NeuronClamp

    prompt = "The capital of France is"
    users = {"mask": (HeadMask(3, 2), HeadMask(5, 1)), "clamp": (NeuronClamp(20, 100, value=40.0),)}
    alone = {k: compare_generations(smollm2.model, PlaygroundParams(prompt=prompt, interventions=iv))
             for k, iv in users.items()}
    assert alone["mask"].intervened_text != alone["clamp"].intervened_text
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            pages = {}
            for k, ivs in users.items():  # both fire before either is awaited
                q = urllib.parse.urlencode({"prompt": prompt, "interventions": json.dumps([iv.to_dict() for iv in ivs])})
                ctx = browser.new_context(viewport={"width": 1400, "height": 1000})  # separate sessions
                pages[k] = ctx.new_page()
                pages[k].goto(f"{server}/playground?{q}", wait_until="commit")
            for k, page in pages.items():
                expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=LOAD_TIMEOUT_MS)
                assert page.locator('[data-testid="stException"]').count() == 0
                want = " ".join((prompt + alone[k].intervened_text).split())
                assert _intervened_text(page).endswith(want) or want in _intervened_text(page), k
                page.screenshot(path=str(shots / f"playground_{k}.png"))
        finally:
            browser.close()
