"""AppTest of the Retrieval heads page: detects on a one-test grid, sends heads to the Playground."""

from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"


@pytest.mark.integration
def test_retrieval_page_detects_and_sends(smollm2):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/11_retrieval_heads.py").run()
    assert not at.exception and not at.error
    assert at.title[0].value == "Retrieval heads"
    at.text_input(key="rh_lengths").set_value("120")
    at.text_input(key="rh_depths").set_value("0.2")
    at.text_input(key="rh_needles").set_value("0")
    at.number_input(key="rh_max_new_tokens").set_value(24)  # the lead-in and the answer part
    at.number_input(key="rh_proxy_seqs").set_value(2)
    at.button(key="rh_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    labels = {m.label: m.value for m in at.metric}
    assert labels["Counted tests"] == "1 / 1"
    assert len(at.get("plotly_chart")) >= 1
    at.number_input(key="rh_send_k").set_value(3)
    at.button(key="rh_send").click().run()
    assert not at.exception, [e.value for e in at.exception]
    sent = at.session_state["playground_sent"]
    assert len(sent["interventions"]) == 3 and all(iv["kind"] == "head_mask" for iv in sent["interventions"])
    # RazorAttention: the top heads keep their full KV cache in the Playground's KV selector
    at.switch_page("pages/11_retrieval_heads.py").run()
    for key, value in (("rh_lengths", "120"), ("rh_depths", "0.2"), ("rh_needles", "0")):
        at.text_input(key=key).set_value(value)
    at.number_input(key="rh_max_new_tokens").set_value(24)
    at.number_input(key="rh_proxy_seqs").set_value(2).run()  # the stored result shows again, no re-run
    at.number_input(key="rh_send_k").set_value(3)
    at.button(key="rh_send_razor").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert len(at.session_state["razor_heads_for_playground"]) == 3
    assert at.session_state["pg_kv_choice"] == "razor"
    assert at.text_input(key="pg_rz_heads").value.count(":") == 3
    # DeCoRe: the reference's default of 50 heads, masked while decoding only
    at.switch_page("pages/11_retrieval_heads.py").run()
    for key, value in (("rh_lengths", "120"), ("rh_depths", "0.2"), ("rh_needles", "0")):
        at.text_input(key=key).set_value(value)
    at.number_input(key="rh_max_new_tokens").set_value(24)
    at.number_input(key="rh_proxy_seqs").set_value(2).run()
    assert at.number_input(key="rh_send_decore_k").value == 50
    at.button(key="rh_send_decore").click().run()
    assert not at.exception, [e.value for e in at.exception]
    strat = at.session_state["pg_sent_strategy"]
    assert strat["kind"] == "decore" and len(strat["heads"]) == 50 and strat["mask_scope"] == "decode"
    # bad input -> one clear line
    at.switch_page("pages/11_retrieval_heads.py").run()
    at.text_input(key="rh_depths").set_value("1.5").run()
    assert at.error and "outside [0, 1]" in at.error[0].value
