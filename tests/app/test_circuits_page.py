"""AppTest of the Circuits page: renders, compares on the button, sends the circuit to the Playground."""

from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"


@pytest.mark.integration
def test_circuits_page_compares_and_sends(smollm2):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/60_circuits.py").run()
    assert not at.exception and not at.error
    assert at.title[0].value == "Circuits"
    at.selectbox(key="ci_task").set_value("induction")
    at.number_input(key="ci_n_prompts").set_value(1)
    at.number_input(key="ci_ig_steps").set_value(2)
    at.number_input(key="ci_epochs").set_value(20)
    at.number_input(key="ci_n_latents").set_value(16)
    at.button(key="ci_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) >= 5  # graph, node ROC, edge ROC, patching heatmap, faithfulness
    edges = [df.value for df in at.dataframe if "sender" in df.value.columns]
    assert edges and {"effect_qkv", "eap_ig", "discrete_sae"} <= set(edges[0].columns)
    at.slider(key="ci_k").set_value(3)
    at.button(key="ci_send_keep").click().run()
    assert not at.exception
    from mechscope.app.widgets import SENT

    sent = at.session_state[SENT]
    assert len(sent["interventions"]) == 30 * 9 - 3
    assert all(d["mode"] == "zero" for d in sent["interventions"])
