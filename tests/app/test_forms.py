"""The form generator: each field kind gets its widget, starting at the field's default with
the field's help; the widgets give back the Params; bad values are one error line.
No model: the script is a small Params defined here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mechscope.app.ui import FieldKind, field_kind
from mechscope.probes.errors import InputError
from mechscope.probes.results import Params


@dataclass(frozen=True)
class DemoParams(Params):
    n: int = 7
    ratio: float = 0.25
    flag: bool = True
    name: str = "abc"
    mode: Literal["fast", "slow"] = "slow"
    text_set: str = field(default="b", metadata={"help": "a set", "choices": lambda: ["a", "b", "c"]})
    limit: int | None = field(default=None, metadata={"help": "items to use (None: all)"})
    scale: float | None = None
    lengths: tuple[int, ...] = (10, 20)
    depths: tuple[float, ...] = (0.0, 0.5)
    words: tuple[str, ...] = ()
    pick: tuple[str, ...] = field(default=("x",), metadata={"help": "some", "choices": ("x", "y")})
    bos: bool | None = None
    target: str | int | None = None
    blob: object = None  # no simple widget
    n_help: int = field(default=3, metadata={"help": "how many"})

    def __post_init__(self):
        if self.n > 100:
            raise InputError("n must be at most 100.")


def _script():
    import streamlit as st

    from mechscope.app import ui
    from tests.app.test_forms import DemoParams

    p = ui.params_form(DemoParams, key="demo", values={"blob": "given"})
    st.session_state["got"] = p


def _run(**state):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_script, default_timeout=30)
    for k, v in state.items():
        at.session_state[k] = v
    return at.run()


def test_field_kinds():
    assert field_kind(int) == FieldKind("int")
    assert field_kind(int | None) == FieldKind("int", True)
    assert field_kind(float) == FieldKind("float")
    assert field_kind(bool) == FieldKind("bool")
    assert field_kind(bool | None) == FieldKind("choice", True, (True, False))
    assert field_kind(str) == FieldKind("str")
    assert field_kind(Literal["a", "b"]) == FieldKind("choice", False, ("a", "b"))
    assert field_kind(str, {"choices": ("p", "q")}) == FieldKind("choice", False, ("p", "q"))
    assert field_kind(str, {"choices": lambda: ["p"]}) == FieldKind("choice", False, ("p",))
    assert field_kind(object, None, ["p"]) == FieldKind("choice", False, ("p",))  # choices given by the page
    assert field_kind(tuple[int, ...]) == FieldKind("list", False, (), int)
    assert field_kind(tuple[float, ...] | None) == FieldKind("list", True, (), float)
    assert field_kind(tuple[str, ...], {"choices": ("x",)}) == FieldKind("multi", False, ("x",), str)
    assert field_kind(str | tuple[int, ...]) == FieldKind("str")
    assert field_kind(object) is None and field_kind(tuple) is None and field_kind(tuple[tuple, ...]) is None


def test_widgets_start_at_the_defaults_and_give_them_back():
    at = _run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error
    assert at.session_state["got"] == DemoParams(blob="given")
    assert at.number_input(key="demo_n").value == 7
    assert at.number_input(key="demo_ratio").value == 0.25
    assert at.checkbox(key="demo_flag").value is True
    assert at.text_input(key="demo_name").value == "abc"
    mode = at.selectbox(key="demo_mode")
    assert mode.value == "slow" and mode.options == ["fast", "slow"]
    ts = at.selectbox(key="demo_text_set")
    assert ts.value == "b" and ts.options == ["a", "b", "c"]  # the metadata's callable choices
    assert at.number_input(key="demo_limit").value is None  # empty = None
    assert "all" in at.number_input(key="demo_limit").placeholder  # says what None means
    assert at.number_input(key="demo_scale").value is None
    assert at.text_input(key="demo_lengths").value == "10, 20"
    assert at.text_input(key="demo_depths").value == "0.0, 0.5"
    assert at.text_input(key="demo_words").value == ""
    assert at.multiselect(key="demo_pick").value == ["x"]
    assert at.selectbox(key="demo_bos").value is None
    assert at.text_input(key="demo_target").value == ""
    assert at.number_input(key="demo_n_help").help.startswith("how many")  # help from the metadata
    assert "(default 3)" in at.number_input(key="demo_n_help").help
    keys = {w.key for w in at.main if getattr(w, "key", None)}
    assert "demo_blob" not in keys  # set by the page: no widget
    from mechscope.app.ui import FORMS_STATE

    cls, shown = at.session_state[FORMS_STATE]["demo"]
    assert cls is DemoParams and "blob" not in shown and shown["n"] == 7


def test_widgets_give_the_edited_values():
    at = _run()
    at.number_input(key="demo_n").set_value(9)
    at.number_input(key="demo_ratio").set_value(0.5)
    at.checkbox(key="demo_flag").uncheck()
    at.text_input(key="demo_name").set_value("xyz")
    at.selectbox(key="demo_mode").set_value("fast")
    at.selectbox(key="demo_text_set").set_value("c")
    at.number_input(key="demo_limit").set_value(12)
    at.text_input(key="demo_lengths").set_value(" 5,6 ,")
    at.text_input(key="demo_depths").set_value("1")
    at.text_input(key="demo_words").set_value("a, b")
    at.multiselect(key="demo_pick").set_value(["x", "y"])
    at.selectbox(key="demo_bos").set_value(False)
    at.text_input(key="demo_target").set_value(" Paris")
    at.run()
    assert not at.exception and not at.error
    assert at.session_state["got"] == DemoParams(
        n=9, ratio=0.5, flag=False, name="xyz", mode="fast", text_set="c", limit=12, lengths=(5, 6), depths=(1.0,),
        words=("a", "b"), pick=("x", "y"), bos=False, target=" Paris", blob="given")


def test_bad_values_are_one_error_line():
    at = _run()
    at.text_input(key="demo_lengths").set_value("1, x").run()
    assert not at.exception
    assert len(at.error) == 1 and "comma-separated int values" in at.error[0].value
    at.text_input(key="demo_lengths").set_value("1").run()
    at.number_input(key="demo_n").set_value(101).run()  # the Params' own check
    assert not at.exception
    assert len(at.error) == 1 and "at most 100" in at.error[0].value


def test_a_preset_session_value_wins_over_the_default():
    at = _run(demo_n=42)
    assert at.number_input(key="demo_n").value == 42 and at.session_state["got"].n == 42


def test_fields_choices_and_unknown_names():
    from streamlit.testing.v1 import AppTest

    def script():
        import streamlit as st

        from mechscope.app import ui
        from tests.app.test_forms import DemoParams

        st.session_state["got"] = ui.params_form(DemoParams, key="f", fields=("name", "n"),
                                                 choices={"name": ["abc", "def"]}, labels={"n": "How many"})

    at = AppTest.from_function(script, default_timeout=30).run()
    assert not at.exception
    assert [w.key for w in at.main if getattr(w, "key", None) in ("f_n", "f_name")] == ["f_name", "f_n"]
    assert at.selectbox(key="f_name").options == ["abc", "def"]
    assert at.number_input(key="f_n").label == "How many"
    assert at.session_state["got"] == DemoParams()

    def bad():
        from mechscope.app import ui
        from tests.app.test_forms import DemoParams

        ui.params_form(DemoParams, key="g", fields=("nope",))

    at = AppTest.from_function(bad, default_timeout=30).run()
    assert at.exception and "no field(s) nope" in at.exception[0].value

    def unsupported():
        from mechscope.app import ui
        from tests.app.test_forms import DemoParams

        ui.params_form(DemoParams, key="h", fields=("blob",))

    at = AppTest.from_function(unsupported, default_timeout=30).run()
    assert at.exception and "no simple widget" in at.exception[0].value
