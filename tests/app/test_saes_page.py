"""The SAEs page: eval table, feature pages on demand, text heat, token search (real model)."""

from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"


def _saes_page():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/50_saes.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.integration
def test_saes_page_renders_and_computes_feature_pages(smollm2):
    at = _saes_page()
    evals = at.dataframe[0].value  # the shipped SAEs' per-domain evals, read from the manifest
    assert len(evals) == 6 * 5 and set(evals["domain"]) == {"prose", "dialogue", "code", "documentation", "numbers"}
    assert evals["L0"].max() <= 64 and len(at.get("plotly_chart")) == 1  # the per-domain EV heatmap
    at.number_input(key="sae_feat_n_texts").set_value(8).run()
    at.button(key="sae_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) == 3  # + density histogram + the latent's activation histogram
    assert any("activation per token" in c.value for c in at.caption)

    # a typed latent out of range: the one range line, and the default latent stays in use
    top = at.number_input(key="sae_latent").value
    at.number_input(key="sae_latent").set_value(5000).run()
    assert [e.value for e in at.error] == ["Latent 5000 is out of range (0..4095). Not applied."]
    assert [n.key for n in at.number_input if n.key and n.key.startswith("sae_value_")][0].endswith(f"_{top}")
    at.number_input(key="sae_latent").set_value(top).run()
    assert not at.error

    # steering hand-off: the value offered is the chosen latent's own, and the send lands in the Playground
    first = at.number_input(key="sae_latent").value
    other = 7 if first != 7 else 8
    name = at.selectbox(key="sae_name").value
    values = [n for n in at.number_input if n.key and n.key.startswith("sae_value_")]
    assert len(values) == 1 and values[0].key.endswith(f"_{first}")
    values[0].set_value(123.0).run()
    at.number_input(key="sae_latent").set_value(other).run()
    values = [n for n in at.number_input if n.key and n.key.startswith("sae_value_")]
    assert len(values) == 1 and values[0].key.endswith(f"_{other}") and values[0].value != 123.0
    offered = values[0].value
    at.session_state["pg_max_new"] = 3
    at.button(key="sae_send").click().run()
    assert not at.exception, [e.value for e in at.exception]
    from mechscope.app.widgets import SENT

    (sent,) = at.session_state[SENT]["interventions"]
    assert sent["latent"] == other and sent["value"] == offered
    assert at.title[0].value == "Playground"  # landed there, and generated with it
    assert sent["sae"] == name
    assert f"SAE {name} latent {other} += {offered:g}" in " ".join(c.value for c in at.caption)


@pytest.mark.integration
def test_playground_sae_widget(smollm2):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/02_playground.py").run()
    at.toggle(key="pg_sae_on").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key="pg_sae_mode").set_value("splice").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.mark.integration
def test_saes_page_measures_the_decoder_clouds(smollm2):
    """The feature-geometry section: spectra and α / volume by layer over the chosen fit range."""
    at = _saes_page()
    at.number_input(key="sae_geo_fit_stop").set_value(100).run()
    at.button(key="sae_geo_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) == 3  # the eval heatmap + alpha/volume by layer + the spectra
    table = at.dataframe[-1].value
    assert list(table["n_fit"]) == [90] * len(table) and len(table) >= 1
