"""AppTest of the Isotropy page: renders, computes with small parameters, bad input is one
line; contrastive search is a Playground strategy."""

from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"


@pytest.mark.integration
def test_isotropy_page_computes(smollm2):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/30_isotropy.py").run()
    assert not at.exception and not at.error
    assert at.title[0].value == "Isotropy"
    at.number_input(key="iso_n_texts").set_value(3)
    at.number_input(key="iso_T").set_value(16)
    at.number_input(key="iso_sample").set_value(30)
    at.toggle(key="iso_heads").set_value(False)
    at.button(key="iso_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    labels = [m.label for m in at.metric]
    assert "IsoScore, last layer" in labels
    assert len(at.get("plotly_chart")) >= 5
    at.number_input(key="wh_n").set_value(3)
    at.multiselect(key="wh_methods").set_value(["zca"])
    at.button(key="wh_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.multiselect(key="wh_methods").set_value([]).run()  # bad input: one clear line
    assert at.error and "at least one whitening" in at.error[0].value


@pytest.mark.integration
def test_playground_contrastive_strategy(smollm2):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=300)
    at.run()
    at.session_state["pg_max_new"] = 6
    at.switch_page("pages/02_playground.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "contrastive search" in at.selectbox(key="pg_strategy_choice").options
    at.selectbox(key="pg_strategy_choice").set_value("contrastive").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.slider(key="pg_cs_alpha").value == 0.6 and at.number_input(key="pg_cs_k").value == 4
    at.slider(key="pg_cs_alpha").set_value(0.0).run()  # α = 0: contrastive search is greedy
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
