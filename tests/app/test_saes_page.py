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
    at.number_input(key="sae_feat_n_texts").set_value(8).run()
    at.button(key="sae_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) == 2  # density histogram + the latent's activation histogram
    assert any("activation per token" in c.value for c in at.caption)


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
    assert len(at.get("plotly_chart")) == 2  # alpha/volume by layer + the spectra
    table = at.dataframe[-1].value
    assert list(table["n_fit"]) == [90] * len(table) and len(table) >= 1
