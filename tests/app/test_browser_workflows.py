"""Real-browser acceptance tests of the dashboard's workflows (headless Chromium driving
``streamlit run``, one server for the module; tests/app/browser.py): a long prompt keeps the
page and the server's memory bounded, a background run survives navigation and a reload and
reopens from "Recent runs", Cancel stops a run, every download kind gives a file of its
format, and a URL restores a page's state.

The server runs with ``MECHSCOPE_BACKGROUND_AFTER_S=0``: every analysis with a cost formula
goes to the background, so runs are short and the page never blocks. The long-prompt test
comes first: its 50-word case is measured on a server that has only loaded the model.
"""

import os
import io
import re
import time
import urllib.parse
import zipfile

from tests.app.browser import LOAD_TIMEOUT_MS, MARKS, no_exception, sidebar

pytestmark = MARKS
SERVER_ENV = {"MECHSCOPE_BACKGROUND_AFTER_S": "0"}

RUN_TIMEOUT_MS = 480_000  # a 5,000-token forward pass on a 2-core CPU shared with other tests takes minutes


def _runs(server) -> list[dict]:
    from mechscope.sweeps.background import recent_runs

    return recent_runs(server.runs)


def _idle(server, timeout_ms: int = RUN_TIMEOUT_MS) -> None:
    """Wait until no run of the server is running (a test's leftover background work, such as
    a page's analyses of a 5,000-token prompt, would otherwise hold the model for the next)."""
    deadline = time.monotonic() + timeout_ms / 1000
    while any(r["status"] == "running" for r in _runs(server)):
        assert time.monotonic() < deadline, "the server's background runs did not finish"
        time.sleep(0.5)


def _long_text(words: int) -> str:
    """``words`` words of plain English (about one token each: a 5,000-word prompt is about
    5,000 tokens; the same number of words of the shipped Paradise Lost is 7,363)."""
    base = ("the quick brown fox jumps over the lazy dog and then the small cat sat on the warm mat while "
            "a bird sang in the old tree by the river").split()
    return " ".join(base[i % len(base)] for i in range(words))


def _main_height(page) -> int:
    """Height of the page's content (Streamlit scrolls an inner container, not the body)."""
    return page.evaluate("""() => Math.max(document.body.scrollHeight,
        document.querySelector('[data-testid="stMain"]')?.scrollHeight ?? 0,
        document.querySelector('[data-testid="stMainBlockContainer"]')?.scrollHeight ?? 0)""")


def _enter_prompt(page, text: str) -> None:
    box = page.get_by_role("textbox", name="Prompt", exact=True)
    box.fill(text)
    box.press("Control+Enter")  # commit the text area: the page reruns


def _settled(page, timeout_ms: int = RUN_TIMEOUT_MS) -> None:
    """Wait until the script run has finished (the app's script state is not running)."""
    page.wait_for_function(
        """() => document.querySelector('[data-testid="stApp"]')?.getAttribute('data-test-script-state')
                 === 'notRunning'""", timeout=timeout_ms)


def test_long_prompt_keeps_page_and_memory_bounded(server, page, shots):
    """Next-token page, 50 then 5,000 words (the 50-word case first, on a server that has only
    loaded the model). The page's height with 5,000 words stays within 1.5× that with 50 (the
    token chips and the attention heatmap are windowed), and the streamlit process' peak RSS
    (VmHWM) after the 5,000-word prompt is at most 1.5× its peak after the 50-word one
    (both peaks include the loaded model; the increase over the post-load RSS is reported)."""
    from playwright.sync_api import expect

    page.goto(f"{server.url}/next_token")
    expect(page.get_by_role("textbox", name="Prompt", exact=True)).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    _settled(page, LOAD_TIMEOUT_MS)
    loaded = server.memory_kib()
    tokens = page.locator(".mechscope-token")

    short = _long_text(50)
    _enter_prompt(page, short)
    expect(tokens.last).to_have_text("␣" + short.split()[-1], timeout=RUN_TIMEOUT_MS)
    expect(page.locator(".js-plotly-plot")).to_have_count(2, timeout=RUN_TIMEOUT_MS)
    _settled(page)
    no_exception(page)
    h50, m50 = _main_height(page), server.memory_kib()

    long = _long_text(5000)
    _enter_prompt(page, long)
    expect(page.get_by_text(re.compile(r"tokens: 128 queries × 128 keys shown"))).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(page.locator(".js-plotly-plot")).to_have_count(2, timeout=RUN_TIMEOUT_MS)
    _settled(page)
    no_exception(page)
    n_chips = tokens.count()
    h5000, m5000 = _main_height(page), server.memory_kib()
    page.screenshot(path=str(shots / "next_token_5000_words.png"))
    print(f"\nheight 50 words {h50}px, 5000 words {h5000}px; chips shown {n_chips}; RSS after load "
          f"{loaded['VmRSS'] / 1024:.0f} MiB, peak after 50 words {m50['VmHWM'] / 1024:.0f} MiB, after 5000 words "
          f"{m5000['VmHWM'] / 1024:.0f} MiB (increase over load {(m50['VmHWM'] - loaded['VmRSS']) / 1024:.0f} vs "
          f"{(m5000['VmHWM'] - loaded['VmRSS']) / 1024:.0f} MiB)")
    assert n_chips == 400  # ui.MAX_CHIPS: a window of the prompt, not 7,000 chips
    assert h5000 <= 1.5 * h50, (h50, h5000)
    assert m5000["VmHWM"] <= 1.5 * m50["VmHWM"], (m50, m5000)


def _set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    _settled(page)


def _start_sinks(page, server, **numbers) -> dict:
    """On the Attention-sinks page: set the form's numbers, press the button and return the
    background run it started (from the server's runs folder)."""
    from playwright.sync_api import expect

    _idle(server)
    before = {r["run"] for r in _runs(server)}
    page.goto(f"{server.url}/attention_sinks")
    button = page.get_by_role("button", name="Compute sink metrics")
    expect(button).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    _settled(page)
    for label, value in numbers.items():
        _set_number(page, label, value)
    button.click()
    deadline = time.monotonic() + LOAD_TIMEOUT_MS / 1000
    while not ({r["run"] for r in _runs(server)} - before):
        assert time.monotonic() < deadline, "no background run was started"
        time.sleep(0.2)
    (run,) = [r for r in _runs(server) if r["run"] not in before]
    assert run["kind"] == "sinks"
    return run


def test_background_run_survives_navigation_and_reload_and_reopens_from_recent_runs(server, page, shots):
    """An attention-sinks run (in the background: the server's threshold is 0 s) on 2 texts of
    16 tokens; once the page shows its result, the user goes to another page through the
    navigation, reloads the browser (a new session), finds the run under "Recent runs" in the
    sidebar and clicks it: the sinks page opens with the run's parameters in its form and
    shows its finished result, without running it again.

    The navigation waits for the page to settle: a click made while the page is still sending
    the run to the background can, on a loaded machine, end back on the sinks page with its
    form at the defaults (Streamlit merges queued reruns into the later one's page). The
    cancel test covers a run that is still live."""
    from playwright.sync_api import expect

    run = _start_sinks(page, server, **{"Texts": 2, "First T tokens": 16})
    assert run["params"]["n_texts"] == 2 and run["params"]["max_tokens"] == 16
    sink_metric = page.locator('[data-testid="stMetric"]').filter(has_text="Sink_1")
    expect(sink_metric.first).to_be_visible(timeout=RUN_TIMEOUT_MS)
    _settled(page)

    sidebar(page).get_by_role("link", name="Next token").click()  # in-app navigation: the same session
    expect(page.get_by_role("textbox", name="Prompt", exact=True)).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    assert "/next_token" in page.url
    page.reload()  # a new session: the list comes from the runs folder
    entry = sidebar(page).get_by_role("button").filter(has_text="sinks").first
    expect(entry).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    expect(entry).to_contain_text("done", timeout=RUN_TIMEOUT_MS)
    page.screenshot(path=str(shots / "recent_runs.png"))
    entry.click()
    expect(page.get_by_role("heading", name="Attention sinks", exact=True)).to_be_visible(timeout=60_000)
    assert "/attention_sinks" in page.url
    expect(page.get_by_label("Texts", exact=True)).to_have_value("2", timeout=60_000)  # the run's parameters
    expect(page.get_by_label("First T tokens", exact=True)).to_have_value("16")
    metric = page.locator('[data-testid="stMetric"]').filter(has_text="Sink_1")
    expect(metric.first).to_be_visible(timeout=60_000)
    expect(page.locator(".js-plotly-plot").first).to_be_visible()
    _settled(page)
    no_exception(page)
    page.screenshot(path=str(shots / "run_reopened.png"))
    assert [r["run"] for r in _runs(server) if r["kind"] == "sinks"] == [run["run"]]  # nothing ran again
    assert _runs(server)[0]["status"] == "done"


def test_cancel_a_background_run(server, page, shots):
    """Attention sinks on 64 texts of 16 tokens (16 batches, a minute or more on a 2-core CPU)
    in the background; Cancel stops it at its next batch; the page and the Runs page say it
    was cancelled; nothing crashes."""
    from playwright.sync_api import expect

    run = _start_sinks(page, server, **{"First T tokens": 16})
    cancel = page.get_by_role("button", name="Cancel")
    expect(cancel).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    cancel.click()
    deadline = time.monotonic() + RUN_TIMEOUT_MS / 1000  # it stops at its next batch, once it has the model
    while [r["status"] for r in _runs(server) if r["run"] == run["run"]] != ["cancelled"]:
        assert time.monotonic() < deadline, [r for r in _runs(server) if r["run"] == run["run"]]
        time.sleep(0.5)
    expect(page.get_by_text("was cancelled").first).to_be_visible(timeout=30_000)  # the page says so
    page.goto(f"{server.url}/runs")
    row = page.get_by_role("button").filter(has_text=run["run"])
    expect(row).to_contain_text("cancelled", timeout=LOAD_TIMEOUT_MS)
    _settled(page)
    no_exception(page)
    page.screenshot(path=str(shots / "run_cancelled.png"))


_CATCH_DOWNLOADS = """() => {
    if (window.__downloads) return;
    window.__downloads = [];
    const click = HTMLAnchorElement.prototype.click;
    HTMLAnchorElement.prototype.click = function () {
        if (this.href && this.href.includes('/media/')) { window.__downloads.push(this.href); return; }
        return click.call(this);
    };
}"""


def _download(page, button, timeout_ms: int = 120_000) -> bytes:
    """Click a download button and return the file's bytes. Streamlit's button clicks a link to
    the /media/ URL that serves the data (for a file made on click, after asking the server
    for it); browser downloads do not complete in this headless Chromium, so the link is
    caught and its URL fetched."""
    page.evaluate(_CATCH_DOWNLOADS)
    n = page.evaluate("() => window.__downloads.length")
    button.click()
    page.wait_for_function(f"() => window.__downloads.length > {n}", timeout=timeout_ms)
    url = page.evaluate("() => window.__downloads[window.__downloads.length - 1]")
    resp = page.request.get(url)
    assert resp.ok, (resp.status, url)
    return resp.body()


def test_every_download_kind_gives_a_file_of_its_format(server, page, tmp_path):
    """On the logit-lens page (its result): CSV and Parquet of its table, offline HTML,
    PNG and SVG of a figure, and the result as a zip that ``load_result`` reads back."""
    import pandas as pd
    from playwright.sync_api import expect

    from mechscope.analyses.catalog import load_result
    from mechscope.app.ui import kaleido_available

    prompt = "The Eiffel Tower is in"
    page.goto(f"{server.url}/logit_lens?" + urllib.parse.urlencode({"prompt": prompt}))
    heat = page.locator(".js-plotly-plot").first
    expect(heat).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    _idle(server)  # the page's own background run has ended, and the page has shown it
    _settled(page)

    page.get_by_text("Table", exact=True).click()  # the expander
    csv = _download(page, page.get_by_role("button", name="CSV", exact=True))
    first = csv.decode("utf-8").splitlines()[0].split(",")
    assert first[:3] == ["layer", "pos", "input_token"], first
    parquet = _download(page, page.get_by_role("button", name="Parquet", exact=True))
    assert parquet[:4] == b"PAR1" and parquet[-4:] == b"PAR1"
    table = pd.read_parquet(io.BytesIO(parquet))
    assert len(table) == len(pd.read_csv(io.BytesIO(csv))) > 0

    html = _download(page, page.get_by_role("button", name="HTML", exact=True).first).decode("utf-8")
    assert "<html>" in html[:100] and html.rstrip().endswith("</html>") and "Plotly.newPlot" in html
    assert "plotly.js v" in html and '<script src="http' not in html  # plotly.js inlined: works offline
    if os.environ.get("CI"):
        assert kaleido_available(), "CI installs kaleido (dev extra) and Chromium: PNG/SVG must be offered"
    if kaleido_available():
        png = _download(page, page.get_by_role("button", name="PNG", exact=True).first)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        svg = _download(page, page.get_by_role("button", name="SVG", exact=True).first).decode("utf-8")
        assert svg.lstrip().startswith("<svg") and "</svg>" in svg
    else:
        expect(page.get_by_text("PNG/SVG downloads need kaleido")).to_be_visible()  # said instead

    page.get_by_text("Save / share this result").first.click()
    zip_button = page.get_by_role("button", name="Download zip")
    expect(zip_button).to_be_visible(timeout=30_000)
    data = _download(page, zip_button)  # the zip is made when clicked
    no_exception(page)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        zf.extractall(tmp_path / "zip")
    (folder,) = [p for p in (tmp_path / "zip").iterdir() if p.is_dir()]
    res = load_result(folder)
    assert type(res).__name__ == "LogitLensResult" and res.params.prompt == prompt
    no_exception(page)


def _shows(titles, text: str) -> None:
    """Once the page settles, exactly one chart title, containing ``text``."""
    from playwright.sync_api import expect

    expect(titles.filter(has_text=text)).to_have_count(1, timeout=RUN_TIMEOUT_MS)
    expect(titles).to_have_count(1, timeout=30_000)


def test_url_restores_page_state(server, page, shots):
    """Next-token page from a link with prompt, layer and head: the widgets show them and the
    result is computed for them; moving a slider writes the URL; a reload restores the same
    state."""
    from playwright.sync_api import expect

    prompt = "The cat sat on the mat"
    page.goto(f"{server.url}/next_token?" + urllib.parse.urlencode({"prompt": prompt, "layer": 3, "head": 2}))
    box = page.get_by_role("textbox", name="Prompt", exact=True)
    expect(box).to_have_value(prompt, timeout=LOAD_TIMEOUT_MS)
    layer, head = (page.get_by_role("slider", name=n) for n in ("Layer", "Head"))
    expect(layer).to_have_value("3")
    expect(head).to_have_value("2")
    tokens = page.locator(".mechscope-token")
    expect(tokens).to_have_text(["The", "␣cat", "␣sat", "␣on", "␣the", "␣mat"], timeout=RUN_TIMEOUT_MS)
    title = page.locator(".js-plotly-plot .gtitle").filter(has_text="Attention pattern")
    _shows(title, "layer 3 head 2")
    _settled(page)

    head.focus()
    head.press("ArrowRight")  # head 2 -> 3
    expect(head).to_have_value("3")
    page.wait_for_url(re.compile(r"[?&]head=3(&|$)"), timeout=60_000)
    _shows(title, "layer 3 head 3")
    _settled(page)
    q = urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)
    assert q["prompt"] == [prompt] and q["layer"] == ["3"] and q["head"] == ["3"], q

    page.reload()
    expect(box).to_have_value(prompt, timeout=LOAD_TIMEOUT_MS)
    expect(layer).to_have_value("3")
    expect(head).to_have_value("3")
    _shows(title, "layer 3 head 3")
    _settled(page)
    no_exception(page)
    page.screenshot(path=str(shots / "next_token_from_link.png"))
