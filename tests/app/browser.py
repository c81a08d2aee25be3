"""Shared pieces of the real-browser tests: the dashboard served by ``streamlit run`` (one
server per test module) and Debian's headless Chromium driven by Playwright.

A module sets ``SERVER_ENV`` (a dict) to add environment variables to its server; the
server's results and runs always go to the module's tmp dir (``MECHSCOPE_RESULTS``), never
to the user's cache. The server imports this checkout (``PYTHONPATH``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
LOAD_TIMEOUT_MS = 240_000  # the server loads the model on the first page view
VIEWPORT = {"width": 1400, "height": 1000}

MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                       reason="no /usr/bin/chromium (in CI this test must run)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    results: Path  # $MECHSCOPE_RESULTS of the server
    log: Path

    @property
    def runs(self) -> Path:
        return self.results / "runs"

    def memory_kib(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) of the streamlit process, in KiB."""
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(rest.split()[0])
        return out


def start_server(tmp: Path, extra_env: dict | None = None):
    """``streamlit run app/Home.py`` on a free port (a generator: yields a :class:`Server`
    once healthy, stops it afterwards)."""
    port = free_port()
    results = tmp / "results"
    log_path = tmp / "streamlit.log"
    log = open(log_path, "w")
    pythonpath = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": pythonpath,
           "MECHSCOPE_RESULTS": str(results), **(extra_env or {})}
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
                pytest.fail(f"streamlit exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("streamlit did not become healthy within 90 s")
            time.sleep(0.5)
        yield Server(url, proc, results, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        log.close()


def launch(playwright):
    """Headless Chromium (Debian's)."""
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing (install Debian's chromium package)")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


def no_exception(page) -> None:
    """No Streamlit exception box on the page."""
    boxes = page.locator('[data-testid="stException"]')
    assert boxes.count() == 0, boxes.first.inner_text()


def sidebar(page):
    return page.locator('[data-testid="stSidebar"]')


def describe_page(page, screenshot: Path) -> str:
    """What the browser shows (for a failure report): URL, Streamlit's script and connection
    state, the visible text (its end) and a screenshot's path."""
    try:
        page.screenshot(path=str(screenshot), full_page=True)
        state = page.evaluate("""() => {
            const app = document.querySelector('[data-testid="stApp"]');
            return {script: app?.getAttribute('data-test-script-state'),
                    connection: app?.getAttribute('data-test-connection-state')};
        }""")
        text = page.locator("body").inner_text(timeout=5_000)
    except Exception as e:  # the page itself may be gone
        return f"page unavailable: {e!r}"
    return f"page {page.url} · script {state['script']} · connection {state['connection']} · screenshot {screenshot}\n{text[-3000:]}"
