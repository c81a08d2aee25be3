"""The Playground's control registries and the functions that draw them.

* ``@intervention_widget(key, label, order)``: ``render(model)`` draws its inputs and returns
  a list of interventions (empty when switched off);
* ``@kv_policy_widget(key, label, order)``: one is chosen in the "KV cache" selector; its
  ``render(model)`` returns a policy object or a name registered in
  ``probes.decoding.KV_POLICIES``;
* ``@strategy_widget(key, label, order)``: one is chosen in the "Decoding" selector; its
  ``render(model)`` returns a decoding strategy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import streamlit as st

from mechscope.app.widgets.handoff import PRESET_KV_POLICY, PRESET_STRATEGY, sent_interventions, take_sent_strategy


@dataclass(frozen=True)
class Widget:
    key: str
    label: str
    render: Callable
    order: int = 50


INTERVENTION_WIDGETS: dict[str, Widget] = {}
KV_POLICY_WIDGETS: dict[str, Widget] = {}
STRATEGY_WIDGETS: dict[str, Widget] = {}


def _register(registry: dict[str, Widget], key: str, label: str, order: int):
    def deco(fn):
        registry[key] = Widget(key, label, fn, order)
        return fn

    return deco


def intervention_widget(key: str, label: str, order: int = 50):
    """Register ``render(model) -> list[Intervention]`` as a Playground control."""
    return _register(INTERVENTION_WIDGETS, key, label, order)


def kv_policy_widget(key: str, label: str, order: int = 50):
    """Register ``render(model) -> KVPolicy | str`` as a choice of the KV-cache selector."""
    return _register(KV_POLICY_WIDGETS, key, label, order)


def strategy_widget(key: str, label: str, order: int = 50):
    """Register ``render(model) -> Strategy`` as a choice of the decoding selector."""
    return _register(STRATEGY_WIDGETS, key, label, order)


def ordered(widgets: dict[str, Widget]) -> list[Widget]:
    return sorted(widgets.values(), key=lambda w: (w.order, w.key))


def render_controls(model) -> tuple[list, object]:
    """Draw every registered control; return ``(interventions, kv_policy)``."""
    interventions: list = list(sent_interventions(model))
    for w in ordered(INTERVENTION_WIDGETS):
        with st.container(border=True):
            interventions.extend(w.render(model) or [])
    preset = st.session_state.pop(PRESET_KV_POLICY, None)
    if preset in KV_POLICY_WIDGETS:
        st.session_state["pg_kv_choice"] = preset
    with st.container(border=True):
        choice = st.selectbox("KV cache (intervened run)", [w.key for w in ordered(KV_POLICY_WIDGETS)],
                              key="pg_kv_choice", format_func=lambda k: KV_POLICY_WIDGETS[k].label)
        policy = KV_POLICY_WIDGETS[choice].render(model)
    return interventions, policy


def render_strategy(model):
    """The decoding selector (sidebar): returns the chosen strategy object."""
    from mechscope.probes.decoding import STRATEGIES

    preset = st.session_state.pop(PRESET_STRATEGY, None)
    if take_sent_strategy():  # a sent strategy becomes a choice of the selector
        preset = "sent"
    keys = [w.key for w in ordered(STRATEGY_WIDGETS)]
    if "pg_sent_strategy" in st.session_state:
        keys = ["sent"] + keys
    if preset in keys:
        st.session_state["pg_strategy_choice"] = preset
    choice = st.sidebar.selectbox("Decoding", keys, key="pg_strategy_choice",
                                  format_func=lambda k: "sent from another page" if k == "sent" else STRATEGY_WIDGETS[k].label)
    if choice == "sent":
        strat = STRATEGIES.from_dict(st.session_state["pg_sent_strategy"])
        st.sidebar.caption(repr(strat))
        return strat
    return STRATEGY_WIDGETS[choice].render(model)
