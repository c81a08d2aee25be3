"""AppTest of the Circuits page's edge-circuit section: scores on the button and draws the
faithfulness curves (with the random baseline) and the circuit graph at a chosen size."""

from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"


@pytest.mark.integration
def test_circuits_page_scores_edge_circuits(smollm2):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=600)
    at.run()
    at.switch_page("pages/60_circuits.py").run()
    assert not at.exception and not at.error
    at.toggle(key="ce_show").set_value(True).run()
    at.number_input(key="ce_n_prompts").set_value(2)
    at.number_input(key="ce_n_eval").set_value(2)
    at.multiselect(key="ce_methods").set_value(["eap", "random"])
    at.number_input(key="ce_n_random").set_value(1)
    at.button(key="ce_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) >= 3  # CPR curve, CMD curve, circuit graph
    summary = [df.value for df in at.dataframe if "cpr" in df.value.columns]
    assert summary and set(summary[0]["method"]) == {"eap", "random"}
    at.select_slider(key="ce_graph_pct").set_value(10.0).run()
    assert not at.exception, [e.value for e in at.exception]
