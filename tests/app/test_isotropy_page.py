"""AppTest of the Isotropy page: renders, computes with small parameters, bad input is one
line; contrastive search is a Playground strategy."""

from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"


@pytest.mark.integration
def test_isotropy_page_computes(smollm2, tmp_path):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/30_isotropy.py").run()
    assert not at.exception and not at.error
    assert at.title[0].value == "Isotropy"
    at.number_input(key="iso_n_texts").set_value(3)
    at.number_input(key="iso_max_tokens").set_value(16)
    at.number_input(key="iso_n_sample").set_value(30)
    at.checkbox(key="iso_heads").set_value(False)
    at.button(key="iso_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    labels = [m.label for m in at.metric]
    assert "IsoScore, last layer" in labels
    assert len(at.get("plotly_chart")) >= 5
    at.number_input(key="wh_n_texts").set_value(3)
    at.multiselect(key="wh_methods").set_value(["zca"])
    at.text_input(key="wh_save_dir").set_value(str(tmp_path))
    at.button(key="wh_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    # the saved whitening lands in the Playground's whitening control (switched on, its file,
    # the Strength slider beside it) and generates with it
    at.session_state["pg_max_new"] = 4
    at.button(key="wh_send_zca").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Playground"
    assert not at.error, [e.value for e in at.error]
    path = tmp_path / "whitening-zca-depth30.safetensors"
    assert at.toggle(key="pg_wh_on").value is True
    assert Path(at.text_input(key="pg_wh_path").value) == path
    assert at.slider(key="pg_wh_strength").value == 1.0
    result = at.session_state["pg_memo"][1]
    (iv,) = result.params.interventions
    from mechscope.probes.checksums import sha256_file

    assert type(iv).__name__ == "Whitening" and Path(iv.path) == path and iv.sha256 == sha256_file(path)
    texts = [m.value for m in at.markdown if m.value.startswith("**")]
    assert len(texts) == 2
    if not result.intervened_text.strip():  # nothing visible came out: the page says why and what to change
        info = " ".join(i.value for i in at.info)
        assert "No visible text: the intervened run" in info and "Strength" in info and "whitening" in info
    # a lower strength (the slider beside it) changes the generation
    at.switch_page("pages/02_playground.py").run()  # AppTest keeps the page a script switched to for one run only
    at.slider(key="pg_wh_strength").set_value(0.1).run()
    at.button(key="pg_generate").click().run()
    assert not at.exception and not at.error
    (iv,) = at.session_state["pg_memo"][1].params.interventions
    assert iv.strength == 0.1
    at.switch_page("pages/30_isotropy.py").run()
    at.multiselect(key="wh_methods").set_value([]).run()  # bad input: one clear line
    assert at.error and "at least one whitening" in at.error[0].value


@pytest.mark.integration
def test_playground_applies_a_sent_whitening(smollm2, tmp_path):
    """A whitening fitted and saved elsewhere, sent as data (path + sha256), is rebuilt by the
    Playground and changes the intervened generation; a wrong digest is one clear error."""
    import torch
    from streamlit.testing.v1 import AppTest

    from mechscope.probes import whitening as wh
    from mechscope.probes.covariance import CloudStats

    model = smollm2.model
    site = wh.site_for_depth(model, 20)
    g = torch.Generator().manual_seed(0)
    st_ = CloudStats(torch.float64)
    st_.add(torch.randn(400, model.cfg.d_model, generator=g, dtype=torch.float64) * 3 + 1)
    path = tmp_path / "w.safetensors"
    digest = wh.save(wh.fit_from_stats("zca", site, st_), path)
    for sha, ok in ((digest, True), ("0" * 64, False)):
        at = AppTest.from_file(str(APP / "Home.py"), default_timeout=300)
        at.run()
        at.session_state["pg_max_new"] = 4
        at.session_state["playground_sent"] = {"interventions": [wh.Whitening(str(path), sha).to_dict()],
                                               "strategy": None, "note": "from a test"}
        at.switch_page("pages/02_playground.py").run()
        assert not at.exception, [e.value for e in at.exception]
        if ok:
            assert not at.error, [e.value for e in at.error]
            assert "whitening w.safetensors" in " ".join(c.value for c in at.caption)
            assert at.session_state["pg_memo"][1].intervened_text != at.session_state["pg_memo"][1].baseline_text
        else:
            assert at.error and "corrupted or changed" in at.error[0].value


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
    assert at.number_input(key="pg_cs_alpha").value == 0.6 and at.number_input(key="pg_cs_k").value == 4
    at.number_input(key="pg_cs_alpha").set_value(0.0).run()  # α = 0: contrastive search is greedy
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
