"""Every page's forms start at their Params' defaults: a default lives only in the Params
(or in a page's documented quick preset, :data:`PAGE_PRESETS`, with the reference one click away).

Each page is rendered untouched (by ``test_app.test_every_page_renders``, which calls
:func:`check_forms_at_defaults`; the Playground also here with every decoding strategy and KV
policy chosen in turn); every form ``ui.params_form`` drew records the values its widgets
gave, and each must equal the field's default read from the dataclass."""

import dataclasses
from pathlib import Path

import pytest

from mechscope.app.ui import FORMS_STATE, PRESETS_STATE, discover_pages

APP = Path(__file__).resolve().parents[2] / "app"

FORMS = {  # the forms each page draws before anything is computed
    "next_token": set(),
    "playground": {"pg_sample", "pg_cs", "pg_decore", "pg_cd", "pg_dola", "pg_sw", "pg_wo", "pg_rz"},
    "attention_sinks": {"sk", "sp", "act"},
    "retrieval_heads": {"rh", "duo"},
    "logit_lens": {"ll", "ll_micro", "ll_ctx"},
    "neurons": {"nr_search", "nr_maxact", "nr_tax"},
    "isotropy": {"iso", "wh", "cs"},
    "saes": {"sae_feat", "sae_abs", "sae_geo"},
    "circuits": {"ci"},
    "sweeps": set(),
    "runs": set(),
}


def _page_presets() -> dict:
    """The quick settings pages start on instead of a Params default (documented in the page)."""
    import ast

    tree = ast.parse((APP / "pages" / "11_retrieval_heads.py").read_text())
    quick = next(n.value for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "QUICK")
    return {"rh": ast.literal_eval(quick)}


PAGE_PRESETS = _page_presets()


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _forms(at) -> dict:
    try:
        return dict(at.session_state[FORMS_STATE])
    except KeyError:
        return {}


def test_every_page_is_listed():
    assert {p.slug for p in discover_pages()} == set(FORMS)


def check_forms_at_defaults(at, slug: str, every_form: bool = True) -> None:
    """The forms a rendered page drew are the page's (:data:`FORMS`; with ``every_form=False``
    some of them) and each widget gave its field's default (or the page's documented preset).
    Called by ``test_app``'s render of every page, so each page is rendered once for both checks
    (the Playground draws a strategy's form only when that strategy is chosen: see below)."""
    forms = _forms(at)
    assert set(forms) == FORMS[slug] if every_form else set(forms) <= FORMS[slug]
    presets = dict(at.session_state[PRESETS_STATE]) if forms else {}
    for key, (cls, shown) in forms.items():
        defaults = {**_defaults(cls), **PAGE_PRESETS.get(key, {})}
        assert presets.get(key, {}) == PAGE_PRESETS.get(key, {}), key  # only the documented presets
        assert shown, key
        for name, value in shown.items():
            assert value == defaults[name], f"{slug}: form {key!r}, {cls.__name__}.{name} = {value!r}, " \
                                           f"default {defaults[name]!r}"


@pytest.mark.integration
def test_playground_forms_stay_at_defaults_under_every_strategy_and_kv_policy(smollm2):
    from streamlit.testing.v1 import AppTest

    from mechscope.probes.act import BETA

    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=300)
    at.run()
    at.session_state["pg_max_new"] = 2  # short generations
    at.switch_page("pages/02_playground.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.slider(key="pg_act_beta").value == BETA
    for choice in at.selectbox(key="pg_strategy_choice").options:
        at.selectbox(key="pg_strategy_choice").set_value(choice).run()
        assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key="pg_strategy_choice").set_value("greedy").run()
    for choice in at.selectbox(key="pg_kv_choice").options:
        at.selectbox(key="pg_kv_choice").set_value(choice).run()
        assert not at.exception, [e.value for e in at.exception]
    check_forms_at_defaults(at, "playground")
