"""AppTest of the Retrieval heads page's DuoAttention and KV-memory sections: trains gates
for one step on short samples, draws the gate map, runs the KV curve ranked by the gates,
and a wrong saved folder is one clear line."""

from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"


@pytest.mark.integration
def test_duo_gates_and_kv_curve_sections(smollm2, tmp_path):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/11_retrieval_heads.py").run()
    assert not at.exception and not at.error
    for key, value in (("duo_steps", 1), ("duo_min_length", 100), ("duo_max_length", 100), ("duo_n_passkeys", 1),
                       ("duo_passkey_words", 3), ("duo_n_sink", 4), ("duo_window", 16)):
        at.number_input(key=key).set_value(value)
    at.button(key="duo_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    labels = {m.label: m.value for m in at.metric}
    assert labels["KV heads with α ≥ 0.5"].endswith("/ 90")
    # the KV curve, ranked by the gates, on a one-test grid
    for key, value in (("rh_lengths", "120"), ("rh_depths", "0.5"), ("rh_needles", "1")):
        at.text_input(key=key).set_value(value)
    at.number_input(key="rh_max_new_tokens").set_value(6)
    at.text_input(key="kv_kv_heads").set_value("3")
    at.number_input(key="kv_window").set_value(16)
    at.button(key="kv_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) >= 3  # gate map, training, KV curve
    table = at.dataframe[-1].value
    assert set(table["policy"]) == {"full", "razor", "uniform"} and len(table) == 3
    at.text_input(key="kv_saved").set_value(str(tmp_path)).run()
    assert at.error and "no saved result" in at.error[0].value
