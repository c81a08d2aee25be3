"""Real-browser tests: the dashboard served by ``streamlit run`` and driven by Playwright in
Debian's headless Chromium (/usr/bin/chromium; server and browser fixtures: tests/app/conftest.py
and tests/app/browser.py).

Screenshots go to ``$MECHSCOPE_SCREENSHOTS`` if set, else to the test's tmp dir.
"""

import os

import pytest

from tests.app.browser import LOAD_TIMEOUT_MS, MARKS, no_exception

pytestmark = MARKS


def test_dashboard_in_chromium(server, page, shots):
    from playwright.sync_api import expect

    server = server.url
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


def _intervened_text(page) -> str:
    col = page.locator('[data-testid="stColumn"]').filter(
        has=page.get_by_role("heading", name="Intervened", exact=True)).last
    return " ".join(col.inner_text().split())


def test_two_users_generating_at_once_each_get_what_they_get_alone(server, browser, shots, smollm2):
    """Two sessions open the Playground with different interventions (from links) at the same
    moment; each shows the continuation its interventions give when run alone."""
    import json
    import urllib.parse

    from playwright.sync_api import expect

    from mechscope.analyses.playground import PlaygroundParams, compare_generations
    from mechscope.probes.interventions import HeadMask, NeuronClamp

    prompt = "The capital of France is"
    users = {"mask": (HeadMask(3, 2), HeadMask(5, 1)), "clamp": (NeuronClamp(20, 100, value=40.0),)}
    alone = {k: compare_generations(smollm2.model, PlaygroundParams(prompt=prompt, interventions=iv))
             for k, iv in users.items()}
    assert alone["mask"].intervened_text != alone["clamp"].intervened_text
    server = server.url
    contexts = []
    try:
        pages = {}
        for k, ivs in users.items():  # both fire before either is awaited
            q = urllib.parse.urlencode({"prompt": prompt, "interventions": json.dumps([iv.to_dict() for iv in ivs])})
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000})  # separate sessions
            contexts.append(ctx)
            pages[k] = ctx.new_page()
            pages[k].goto(f"{server}/playground?{q}", wait_until="commit")
        for k, page in pages.items():
            expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=LOAD_TIMEOUT_MS)
            assert page.locator('[data-testid="stException"]').count() == 0
            want = " ".join((prompt + alone[k].intervened_text).split())
            assert _intervened_text(page).endswith(want) or want in _intervened_text(page), k
            page.screenshot(path=str(shots / f"playground_{k}.png"))
    finally:
        for ctx in contexts:
            ctx.close()


FAMILIES = {"next_token": "Next token", "playground": "Playground", "attention_sinks": "Attention sinks",
            "retrieval_heads": "Retrieval heads", "logit_lens": "Logit lens", "neurons": "Neurons",
            "isotropy": "Isotropy", "saes": "SAEs", "circuits": "Circuits", "sweeps": "Sweeps", "runs": "Runs"}


@pytest.mark.skipif(not os.environ.get("MECHSCOPE_SCREENSHOTS"), reason="set MECHSCOPE_SCREENSHOTS to take them")
def test_screenshots_of_every_page_family(server, page, shots):
    """A screen of the front page and of each page family, as a user first sees it (the
    page's default analyses done), into ``$MECHSCOPE_SCREENSHOTS``; no page shows an exception."""
    from playwright.sync_api import expect

    page.goto(server.url)
    expect(page.get_by_role("heading", name="Two-minute tour")).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    page.screenshot(path=str(shots / "00_front.png"))
    for n, (slug, title) in enumerate(FAMILIES.items(), start=1):
        page.goto(f"{server.url}/{slug}")
        expect(page.get_by_role("heading", name=title, exact=True).first).to_be_visible(timeout=LOAD_TIMEOUT_MS)
        page.wait_for_function(
            """() => document.querySelector('[data-testid="stApp"]')?.getAttribute('data-test-script-state')
                     === 'notRunning'""", timeout=LOAD_TIMEOUT_MS)
        page.wait_for_timeout(1000)  # charts draw after the script ends
        no_exception(page)
        page.screenshot(path=str(shots / f"{n:02d}_{slug}.png"))
