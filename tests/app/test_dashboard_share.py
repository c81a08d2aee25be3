"""The front page, links that reproduce a view, exports, windowed token views, one range
message and the queued status — AppTest on small scripts (no model loaded, seconds)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

APP = Path(__file__).resolve().parents[2] / "app"
SHARED: dict = {}  # objects the AppTest scripts below read (they run in this process)


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _saved_result(folder: Path) -> Path:
    from mechscope.analyses.next_token import NextTokenParams, NextTokenResult

    res = NextTokenResult(model_id="tiny", params=NextTokenParams(prompt="a b", k=2), prompt_ids=np.array([1, 2]),
                          prompt_tokens=["a", " b"], top_ids=np.array([3, 4]), top_tokens=[" c", " d"],
                          top_probs=np.array([0.6, 0.3]), top_logprobs=np.log([0.6, 0.3]), entropy=0.9)
    return res.save(folder)


# --- front page ------------------------------------------------------------------------------


def test_front_page_has_one_tour_click_per_family_and_lists_saved_results(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from mechscope.app.front import FAMILIES, UTILITY_PAGES
    from mechscope.app.ui import discover_pages

    monkeypatch.setenv("MECHSCOPE_RESULTS", str(tmp_path))
    _saved_result(tmp_path / "nt-1")
    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=60).run()
    _ok(at)
    assert at.title[0].value == "mechscope"
    assert sorted(f.page for f in FAMILIES) == sorted(p.path.name for p in discover_pages() if p.path.name not in UTILITY_PAGES)
    tour = {b.key for b in at.button if b.key and b.key.startswith("tour_")}
    assert tour == {f"tour_{f.page}" for f in FAMILIES}
    text = "\n".join(m.value for m in at.markdown)
    assert "Follows:" in text and "Wu et al. 2024" in text
    assert f"?result={tmp_path / 'nt-1'}" in text  # the recent saved result, as a link that opens it
    assert "smollm2-135m/resid-L12" in text  # the shipped SAEs


def test_a_result_link_opens_the_saved_result(tmp_path):
    from streamlit.testing.v1 import AppTest

    where = _saved_result(tmp_path / "nt-2")
    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=60)
    at.query_params["result"] = str(where)
    at.run()
    _ok(at)
    assert at.title[0].value == "Saved result: nt-2"
    table = at.dataframe[0].value
    assert list(table["token"]) == [" c", " d"]
    assert len(at.get("plotly_chart")) == 1  # the top-k bars


# --- links: prompt, layer, head --------------------------------------------------------------


def _linked_form():
    import dataclasses

    import streamlit as st

    from mechscope.app import ui

    @dataclasses.dataclass(frozen=True)
    class P:
        layer: int = 3
        head: int = 1
        k: int = 5

    prompt = ui.prompt_box()
    p = ui.params_form(P, key="demo")
    st.write(f"{prompt}|{p.layer}|{p.head}|{p.k}")


def test_the_url_sets_and_follows_prompt_layer_and_head():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_linked_form, default_timeout=30)
    at.query_params.update({"prompt": "Linked prompt", "layer": "7", "head": "2"})
    at.run()
    _ok(at)
    assert at.text_area(key="prompt").value == "Linked prompt"
    assert at.number_input(key="demo_layer").value == 7 and at.number_input(key="demo_head").value == 2
    at.text_area(key="prompt").set_value("Edited").run()
    at.number_input(key="demo_head").set_value(4).run()
    assert at.query_params["prompt"] == ["Edited"] or at.query_params["prompt"] == "Edited"
    assert at.query_params["head"] in (["4"], "4") and at.query_params["layer"] in (["7"], "7")


def test_a_bad_linked_index_is_one_line_and_the_default_is_used():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_linked_form, default_timeout=30)
    at.query_params["layer"] = "-3"
    at.run()
    assert [e.value for e in at.error] == ["Link: layer -3 is out of range (0 or more)."]
    assert at.number_input(key="demo_layer").value == 3


# --- one range message -----------------------------------------------------------------------


def test_check_index_says_the_same_thing_for_every_index():
    from mechscope.app.ui import check_index
    from mechscope.probes.errors import InputError

    assert check_index("Latent", 12, 4096) == 12
    with pytest.raises(InputError, match=r"^Latent 5000 is out of range \(0\.\.4095\)\.$"):
        check_index("Latent", 5000, 4096)
    with pytest.raises(InputError, match=r"^Neuron 99999 is out of range \(0\.\.1535\)\.$"):
        check_index("Neuron", 99999, 1536)
    with pytest.raises(InputError, match="whole number"):
        check_index("Head", 2.5, 9)


# --- exports ---------------------------------------------------------------------------------


def _exports():
    import pandas as pd
    import plotly.graph_objects as go

    from mechscope.app import ui

    ui.show_table(pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}), "demo table")
    ui.show_figure(go.Figure(go.Bar(x=[1, 2], y=[3, 4])), "demo figure")
    ui.show_figure(go.Figure(go.Bar(x=[1], y=[1])), "second figure")


def test_tables_and_figures_come_with_downloads():
    from streamlit.testing.v1 import AppTest

    from mechscope.app.ui import kaleido_available

    at = AppTest.from_function(_exports, default_timeout=30).run()
    _ok(at)
    assert len(at.dataframe) == 1 and len(at.get("plotly_chart")) == 2
    labels = [b.proto.label for b in at.get("download_button")]
    per_figure = 3 if kaleido_available() else 1
    assert labels.count("CSV") == 1 and labels.count("Parquet") == 1 and labels.count("HTML") == 2
    assert len(labels) == 2 + 2 * per_figure
    notes = [c.value for c in at.caption if "kaleido" in c.value]
    assert len(notes) == (0 if kaleido_available() else 1)  # said once, not per figure


def test_table_bytes_round_trip():
    import io

    from mechscope.app.ui import table_bytes

    df = pd.DataFrame({"tok": [" a", "\n"], "p": [0.25, 0.5], "mixed": [1, "x"]})
    back = pd.read_parquet(io.BytesIO(table_bytes(df, "parquet")))
    assert list(back["tok"]) == [" a", "\n"] and list(back["p"]) == [0.25, 0.5] and list(back["mixed"]) == ["1", "x"]
    assert pd.read_csv(io.BytesIO(table_bytes(df, "csv")))["p"].tolist() == [0.25, 0.5]


def test_result_zip_holds_a_reloadable_result(tmp_path):
    import zipfile

    from mechscope.analyses.catalog import load_result
    from mechscope.app.ui import result_zip

    res = load_result(_saved_result(tmp_path / "src"))
    data = result_zip(res, "my result")
    with zipfile.ZipFile(__import__("io").BytesIO(data)) as zf:
        zf.extractall(tmp_path / "out")
    again = load_result(tmp_path / "out" / "my_result")
    pd.testing.assert_frame_equal(again.to_frame(), res.to_frame())
    assert (tmp_path / "out" / "my_result" / "table.csv").is_file()


# --- long inputs -----------------------------------------------------------------------------


def _long_tokens():
    from mechscope.app import ui

    n = 5000
    ui.show_tokens([f"t{i}" for i in range(n)], values=[((i % 7) - 3) / 3 for i in range(n)], key="long")


def test_long_token_strips_are_windowed():
    from streamlit.testing.v1 import AppTest

    from mechscope.app.ui import MAX_CHIPS

    at = AppTest.from_function(_long_tokens, default_timeout=30).run()
    _ok(at)
    chips = [m.value for m in at.markdown if "mechscope-token" in m.value]
    assert len(chips) == 1 and chips[0].count('class="mechscope-token"') == MAX_CHIPS
    assert ">t0<" in chips[0] and f">t{MAX_CHIPS}<" not in chips[0]
    at.slider(key="long_window").set_value(4500).run()
    chip = [m.value for m in at.markdown if "mechscope-token" in m.value][0]
    assert ">t4500<" in chip and ">t4899<" in chip and ">t4499<" not in chip and 'title="4500: ' in chip
    assert any("Tokens 4500–4899 of 5000" in c.value and "max +1 at 6" in c.value for c in at.caption)


# --- waiting for the model -------------------------------------------------------------------


def _waits_for_the_model():
    import streamlit as st

    from mechscope.app import ui
    from tests.app.test_dashboard_share import SHARED

    with ui.model_turn(SHARED["model"], "Circuits comparison"):
        st.write("ran")


def test_a_run_waiting_for_the_model_says_behind_whom():
    from streamlit.testing.v1 import AppTest

    from mechscope.probes.locks import queue_state, turn
    from tests.tiny import tiny_model

    SHARED["model"] = model = tiny_model(n_layers=1)
    holding = threading.Event()

    def other_user():
        with turn(model, "Retrieval heads (session abc123)"):
            holding.set()
            deadline = time.monotonic() + 60
            while queue_state(model)[1] == 0 and time.monotonic() < deadline:  # until the page queues
                time.sleep(0.02)
            time.sleep(0.3)

    t = threading.Thread(target=other_user)
    t.start()
    holding.wait(10)
    at = AppTest.from_function(_waits_for_the_model, default_timeout=30).run()
    t.join(10)
    _ok(at)
    assert [m.value for m in at.markdown][-1] == "ran"
    waited = [c.value for c in at.caption if c.value.startswith("Waited")]
    assert len(waited) == 1 and waited[0].endswith("behind Retrieval heads (session abc123).")
    # alone, nothing is said
    at = AppTest.from_function(_waits_for_the_model, default_timeout=30).run()
    assert not [c for c in at.caption if c.value.startswith("Waited")]


# --- readable figures ------------------------------------------------------------------------


def test_rank_axes_get_integer_ticks_and_legends_a_row_above():
    import plotly.graph_objects as go

    from mechscope.app.ui import tidy_figure

    fig = go.Figure([go.Scatter(x=[0, 1, 2, 3], y=[0.1, 0.2, 0.3, 0.2], name="probability"),
                     go.Scatter(x=[0, 1, 2, 3], y=[5, 6, 7, 6], name="rank", yaxis="y2")])
    fig.update_layout(yaxis2={"title": "rank", "overlaying": "y", "side": "right", "type": "log"})
    tidy_figure(fig)
    assert list(fig.layout.yaxis2.tickvals) == [5, 6, 7] and list(fig.layout.yaxis2.ticktext) == ["5", "6", "7"]
    assert fig.layout.legend.orientation == "h" and fig.layout.legend.y > 1

    wide = go.Figure(go.Scatter(x=[0, 1], y=[1, 3000], name="rank", yaxis="y"))
    wide.update_layout(yaxis={"title": "target rank", "type": "log"})
    tidy_figure(wide)
    assert list(wide.layout.yaxis.tickvals) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 3000]
    assert wide.layout.legend.orientation is None  # one trace: no legend to move


def test_stacked_subplots_get_room():
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from mechscope.app.ui import tidy_figure

    fig = make_subplots(rows=3, cols=1, subplot_titles=("a", "b", "c"))
    for r in (1, 2, 3):
        fig.add_trace(go.Scatter(y=[1, 2]), r, 1)
    fig.update_layout(height=850)
    assert tidy_figure(fig).layout.height >= 3 * 340


def test_float_columns_show_significant_digits_not_leading_zeros():
    from mechscope.app.ui import number_formats

    df = pd.DataFrame({"iso": [1.5e-50, 0.25], "n": [1, 2], "name": ["a", "b"]})
    fmts = number_formats(df)
    assert set(fmts) == {"iso"} and fmts["iso"]["type_config"]["format"] == "%.6g"


def _waits_inside_a_cached_function():
    import streamlit as st

    from mechscope.app import ui
    from mechscope.probes.interventions import applied
    from tests.app.test_dashboard_share import SHARED

    ui.declare_page("Neurons")

    @st.cache_data(show_spinner=False)
    def decoded(n: int) -> int:
        with applied(SHARED["model"], ()):
            return n + 1

    st.write(f"got {decoded(SHARED['n'])}")
    with applied(SHARED["model"], ()):
        st.write("ran")


def test_a_wait_inside_a_cached_function_is_silent():
    from streamlit.testing.v1 import AppTest

    from mechscope.probes.locks import turn
    from tests.tiny import tiny_model

    SHARED["model"] = model = tiny_model(n_layers=1)
    SHARED["n"] = int(time.time() * 1000) % 100000  # a fresh cache key
    holding = threading.Event()

    def other_user(waits: int):
        for _ in range(waits):  # hold the model until the page has queued, twice
            with turn(model, "SAEs (session d)"):
                holding.set()
                deadline = time.monotonic() + 60
                while queue_state(model)[1] == 0 and time.monotonic() < deadline:
                    time.sleep(0.02)
                time.sleep(0.3)
            time.sleep(0.05)

    from mechscope.probes.locks import queue_state

    t = threading.Thread(target=other_user, args=(1,))
    t.start()
    holding.wait(10)
    at = AppTest.from_function(_waits_inside_a_cached_function, default_timeout=60).run()
    t.join(20)
    _ok(at)
    assert [m.value for m in at.markdown][-2:] == [f"got {SHARED['n'] + 1}", "ran"]
    assert not [c for c in at.caption if c.value.startswith("Waited")]  # the cached function waited silently
