"""AppTest of the Attention sinks page: renders with defaults, computes on the button."""

from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"


@pytest.mark.integration
def test_sinks_page_computes(smollm2):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/10_attention_sinks.py").run()
    assert not at.exception and not at.error
    assert at.title[0].value == "Attention sinks"
    at.number_input(key="sk_n_texts").set_value(3)
    at.number_input(key="sk_max_tokens").set_value(16)
    at.multiselect(key="sk_variants").set_value(["no_bos", "bos"])
    at.button(key="sk_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    labels = [m.label for m in at.metric]
    assert "Sink_1^0.3 · no_bos" in labels and "Sink_1^0.3 · bos" in labels
    assert len(at.get("plotly_chart")) >= 5
    # bad input -> one clear line, no traceback
    at.text_input(key="act_heads").set_value("3-4")
    at.button(key="act_run").click().run()
    assert not at.exception
    assert at.error and "LAYER:HEAD" in at.error[0].value


@pytest.mark.integration
def test_playground_sink_window_and_act_toggles(smollm2):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=300)
    at.run()
    at.session_state["pg_max_new"] = 12
    at.session_state["pg_sw_n_sink"] = 2
    at.session_state["pg_sw_window"] = 4  # generation runs past the 6-token cache
    at.session_state["playground_kv_policy"] = "sink_window"
    at.switch_page("pages/02_playground.py").run()
    assert not at.exception, [e.value for e in at.exception]
    at.toggle(key="pg_act_on").set_value(True).run()
    at.text_input(key="pg_act_heads").set_value("3:0, 3:4").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    caption = " ".join(c.value for c in at.caption)
    assert "KV cache: sink_window" in caption and "ACT L3 heads [0, 4]" in caption
    at.text_input(key="pg_act_heads").set_value("x").run()
    assert at.error and "LAYER:HEAD" in at.error[0].value
