"""Shared dashboard pieces: the model picker, the prompt box and error handling.

Pages stay thin: they gather parameters with these helpers, call one analysis, and draw the
Result's figures. The model is loaded once per process (``st.cache_resource``) and every
use of it goes through the probe layer, which holds the model's lock.
"""

from __future__ import annotations

from contextlib import contextmanager

import streamlit as st

from probes.errors import MechscopeError
from probes.models import DEFAULT_MODEL, available_models, load

DEFAULT_PROMPT = "The capital of France is"


@st.cache_resource(show_spinner="Loading model (once per process)…")
def _cached_model(name: str):
    return load(name)


def model_choices() -> list[tuple[str, str]]:
    """(name, label) pairs; models whose weights are missing are labelled as such."""
    out = []
    for spec, installed in available_models():
        label = spec.name + ("" if installed else " (not installed)")
        out.append((spec.name, label))
    return out


def sidebar_model():
    """Model picker in the sidebar; returns the loaded ``(model, spec)`` or stops the page."""
    choices = model_choices()
    names = [n for n, _ in choices]
    labels = dict(choices)
    if "model_name" not in st.session_state:
        st.session_state["model_name"] = DEFAULT_MODEL
    name = st.sidebar.selectbox(
        "Model", names, index=names.index(st.session_state["model_name"]) if st.session_state["model_name"] in names else 0,
        format_func=lambda n: labels[n], key="model_select",
    )
    st.session_state["model_name"] = name
    with guard():
        loaded = _cached_model(name)
        spec = loaded.spec
        st.sidebar.caption(f"{spec.description}  \nSource: {spec.source}  \nLicence: {spec.licence}  \n"
                           f"n_ctx {spec.n_ctx}; BOS by default: {'yes' if spec.prepend_bos else 'no'}")
        return loaded
    st.stop()


def prompt_box(label: str = "Prompt", key: str = "prompt", default: str = DEFAULT_PROMPT, height: int = 100) -> str:
    if key not in st.session_state:
        st.session_state[key] = default
    return st.text_area(label, key=key, height=height)


@contextmanager
def guard():
    """Show a MechscopeError as one ``st.error`` line and stop the page, never a traceback."""
    try:
        yield
    except MechscopeError as exc:
        st.error(str(exc))
        st.stop()
