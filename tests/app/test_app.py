"""Streamlit AppTest of the dashboard: every discovered page, the next-token page and the Playground.

AppTest runs the scripts in this process, so the model loaded by the session fixture (and
``st.cache_resource``) is shared by every test here.
"""

from pathlib import Path

import pytest

from mechscope.app.ui import discover_pages, page_title, token_chips

APP = Path(__file__).resolve().parents[2] / "app"
HOME = APP / "Home.py"
TIMEOUT = 180  # the first run may load the model


def home_at(page: Path | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(HOME), default_timeout=TIMEOUT)
    at.run()
    if page is not None:
        at.switch_page(str(page.relative_to(APP))).run()
    return at


def _no_problems(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _table_text(at) -> str:
    return "\n".join(str(t.value) for t in at.table)


# --- page discovery (no model) --------------------------------------------------------------


def test_discover_pages_order_and_titles(tmp_path):
    (tmp_path / "10_zeta.py").write_text('"""Zeta view.\n\nMore."""\nimport streamlit\n')
    (tmp_path / "02_alpha.py").write_text('"""Ignored docstring."""\nTITLE = "Alpha page"\n')
    (tmp_path / "03_plain.py").write_text("x = 1\n")
    (tmp_path / "helper.py").write_text('"""Not a page."""\n')
    (tmp_path / "1_bad.py").write_text('"""Not a page either."""\n')
    pages = discover_pages(tmp_path)
    assert [(p.order, p.slug, p.title) for p in pages] == [
        (2, "alpha", "Alpha page"), (3, "plain", "Plain"), (10, "zeta", "Zeta view")]


def test_real_pages_are_discovered():
    pages = discover_pages()
    slugs = [p.slug for p in pages]
    assert slugs[:2] == ["next_token", "playground"]
    assert page_title(APP / "pages" / "02_playground.py") == "Playground"


def test_token_chips_escape_and_colour():
    html = token_chips(["<b>", " a"], values=[0.5, -1.0], vmax=1.0)
    assert "&lt;b&gt;" in html and "<b>" not in html.replace('<span', '')
    assert "␣a" in html
    assert "rgba(33,102,172" in html and "rgba(178,24,43" in html  # blue for +, red for −


# --- every page, including those added later -------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("page", discover_pages(), ids=lambda p: p.path.name)
def test_every_page_renders(smollm2, page):
    """Each page renders untouched, with no exception or error, and its forms start at their
    Params' defaults (test_page_defaults)."""
    from tests.app.test_page_defaults import check_forms_at_defaults

    at = home_at(page.path)
    _no_problems(at)
    check_forms_at_defaults(at, page.slug, every_form=page.slug != "playground")
    assert at.title and at.title[0].value  # the page drew something of its own
    model_select = at.sidebar.selectbox(key="model_select")
    assert model_select.value == "smollm2-135m"  # the embedded default is preselected
    assert "gemma-3-270m (not installed)" in model_select.options or _gemma_installed()


def _gemma_installed() -> bool:
    from mechscope.probes.models import EMBEDDED

    return EMBEDDED["gemma-3-270m"].installed()


# --- next-token page -------------------------------------------------------------------------


@pytest.mark.integration
def test_next_token_page(smollm2):
    at = home_at(APP / "pages" / "01_next_token.py")
    _no_problems(at)
    assert at.title[0].value == "Next token"
    table = at.table[0].value
    assert table.iloc[0]["token"] == "' Paris'" and len(table) == 10
    assert list(table["rank"]) == list(range(1, 11))
    charts = at.get("plotly_chart")
    assert len(charts) == 2  # top-k bars and the attention heatmap
    chips = [m.value for m in at.markdown if "mechscope-token" in m.value]
    assert chips and "␣France" in chips[0]

    at.text_area(key="prompt").set_value("The capital of Italy is").run()
    at.slider(key="top_k").set_value(3).run()
    at.slider(key="attn_layer").set_value(29).run()
    at.slider(key="attn_head").set_value(8).run()
    _no_problems(at)
    assert len(at.table[0].value) == 3
    chips = [m.value for m in at.markdown if "mechscope-token" in m.value]
    assert "␣Italy" in chips[0]
    heat = [c for c in at.get("plotly_chart") if "layer 29 head 8" in c.proto.spec]
    assert heat, "the heatmap follows the selected layer and head"


# --- Playground ------------------------------------------------------------------------------


def _playground(**state):
    """The Playground with short generations (and any other session-state presets)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(HOME), default_timeout=TIMEOUT)
    at.run()
    at.session_state["pg_max_new"] = 5
    for k, v in state.items():
        at.session_state[k] = v
    return at.switch_page("pages/02_playground.py").run()


@pytest.mark.integration
def test_playground_toggles(smollm2):
    at = _playground()
    _no_problems(at)
    assert [s.value for s in at.subheader][:3] == ["Interventions", "Baseline", "Intervened"]
    frame = at.dataframe[0].value
    assert len(frame) == 5
    assert (frame["delta_p"].abs() < 1e-6).all()  # nothing switched on yet
    texts = [m.value for m in at.markdown if m.value.startswith("**")]
    assert len(texts) == 2 and texts[0] == texts[1]

    # switch both built-in interventions on (their inputs are enabled only then), then set them
    at.toggle(key="pg_mask_on").set_value(True)
    at.toggle(key="pg_clamp_on").set_value(True)
    at.run()
    _no_problems(at)
    at.number_input(key="pg_mask_layer").set_value(3)
    at.number_input(key="pg_mask_head").set_value(2)
    at.number_input(key="pg_clamp_layer").set_value(20)
    at.number_input(key="pg_clamp_neuron").set_value(100)
    at.number_input(key="pg_clamp_value").set_value(40.0)
    at.run()
    _no_problems(at)
    frame = at.dataframe[0].value
    assert (frame["delta_p"].abs() < 1e-6).all()  # edits do not regenerate
    assert any("press **Generate**" in w.value for w in at.warning)
    at.button(key="pg_generate").click().run()
    _no_problems(at)
    assert not at.warning
    caption = " ".join(c.value for c in at.caption)
    assert "mask L3H2 (uniform)" in caption and "neuron L20N100 = 40" in caption
    frame = at.dataframe[0].value
    assert frame["delta_p"].abs().max() > 1e-3  # the clamp changes the baseline tokens' probabilities
    assert len(at.get("plotly_chart")) == 1
    chips = [m.value for m in at.markdown if "mechscope-token" in m.value]
    assert chips and "rgba(" in chips[0]

    at.selectbox(key="pg_strategy_choice").set_value("sample").run()
    _no_problems(at)
    assert at.number_input(key="pg_sample_temperature").value == 1.0
    assert at.number_input(key="pg_sample_top_k").value is None  # the strategy's own defaults: no truncation
    assert at.number_input(key="pg_sample_top_p").value is None


@pytest.mark.integration
def test_playground_receives_interventions_and_strategy_as_data(smollm2):
    """A page sends registered interventions and a strategy as data; the Playground rebuilds
    them through the registries and uses them."""
    from mechscope.probes.decoding import Sample
    from mechscope.probes.interventions import HeadMask, NeuronClamp

    sent = {"interventions": [HeadMask(2, 1).to_dict(), NeuronClamp(20, 100, value=40.0).to_dict()],
            "strategy": Sample(temperature=0.5, seed=7).to_dict(), "note": "from a test"}
    at = _playground(playground_sent=sent)
    _no_problems(at)
    caption = " ".join(c.value for c in at.caption)
    assert "mask L2H1 (uniform)" in caption and "neuron L20N100 = 40" in caption
    assert at.selectbox(key="pg_strategy_choice").value == "sent"


@pytest.mark.integration
def test_playground_clamp_preset_from_another_page(smollm2):
    """Another page hands a neuron to the Playground through st.session_state."""
    at = _playground(playground_clamp=(20, 100, 40.0))
    _no_problems(at)
    assert at.toggle(key="pg_clamp_on").value is True
    assert at.number_input(key="pg_clamp_neuron").value == 100
    assert "neuron L20N100 = 40" in " ".join(c.value for c in at.caption)
    assert "playground_clamp" not in at.session_state  # consumed once


@pytest.mark.integration
def test_playground_out_of_range_values_are_one_line_next_to_the_control(smollm2):
    at = _playground(playground_clamp=(20, 99999, 40.0))
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == ["Neuron 99999 is out of range (0..1535). Not applied."]
    assert at.number_input(key="pg_clamp_neuron").value == 99999  # the widget shows the value typed
    assert len(at.dataframe) == 1  # the page is not blank: the generation (without the clamp) is there
    assert "no interventions" in " ".join(c.value for c in at.caption)


@pytest.mark.integration
def test_a_link_reproduces_the_playground(smollm2):
    """The interventions and strategy in use are written to the URL; a fresh session opened
    with that URL generates with them."""
    from streamlit.testing.v1 import AppTest

    first = _playground(playground_head_mask=(2, 1, "uniform"))
    _no_problems(first)
    url = {k: first.query_params[k] for k in ("prompt", "interventions", "strategy")}
    url = {k: v[0] if isinstance(v, list) else v for k, v in url.items()}
    assert "HeadMask" in url["interventions"] or '"layer":2' in url["interventions"]
    at = AppTest.from_file(str(HOME), default_timeout=TIMEOUT)
    at.run()
    at.session_state["pg_max_new"] = 5
    at.query_params.update(url)
    at.switch_page("pages/02_playground.py").run()
    _no_problems(at)
    assert "mask L2H1 (uniform)" in " ".join(c.value for c in at.caption)
    texts = [m.value for m in at.markdown if m.value.startswith("**")]
    texts_first = [m.value for m in first.markdown if m.value.startswith("**")]
    assert texts == texts_first  # the same two generations


@pytest.mark.integration
def test_next_token_page_with_a_long_prompt_is_windowed(smollm2):
    """A prompt of a few hundred tokens: at most MAX_CHIPS chips and a WINDOW × WINDOW
    heatmap, whose rows are those of the full pattern (computed here by the analysis)."""
    import json

    import numpy as np

    from mechscope.analyses.next_token import attention_pattern
    from mechscope.app.ui import MAX_CHIPS

    prompt = " ".join(f"word{i % 97} and" for i in range(260))
    at = home_at(APP / "pages" / "01_next_token.py")
    at.text_area(key="prompt").set_value(prompt).run()
    at.slider(key="attn_layer").set_value(3).run()
    at.slider(key="attn_head").set_value(2).run()
    _no_problems(at)
    chips = [m.value for m in at.markdown if "mechscope-token" in m.value][0]
    assert chips.count('class="mechscope-token"') == MAX_CHIPS
    at.slider(key="attn_window").set_value(200).run()
    _no_problems(at)
    spec = json.loads([c for c in at.get("plotly_chart") if "queries 200" in c.proto.spec][0].proto.spec)
    z = spec["data"][0]["z"]
    if isinstance(z, dict):  # plotly's typed-array encoding
        import base64

        shape = [int(n) for n in str(z.get("shape", "")).split(",") if n.strip()] or [-1]
        z = np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"]).reshape(shape)
    z = np.array(z, dtype=float)
    assert z.shape == (128, 128)
    full = attention_pattern(smollm2.model, prompt, 3, 2).pattern
    k0 = 200 + 128 - 128
    want = np.array(full[200:328, k0:328], dtype=float)
    want[np.triu_indices(128, 1)] = np.nan
    np.testing.assert_allclose(z, want, rtol=1e-4, atol=1e-6)
