"""The SAEs page's feature-geometry section (real model)."""

from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"


@pytest.mark.integration
def test_saes_page_measures_the_decoder_clouds(smollm2):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/50_saes.py").run()
    assert not at.exception, [e.value for e in at.exception]
    at.number_input(key="sae_geo_fit_stop").set_value(100).run()
    at.button(key="sae_geo_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) == 2  # alpha/volume by layer + the spectra
    table = at.dataframe[-1].value
    assert list(table["n_fit"]) == [90] * len(table) and len(table) >= 1
