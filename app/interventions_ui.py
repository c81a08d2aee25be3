"""Playground controls as a small registry, so later issues add toggles without editing the page.

Two kinds of widget:

* **intervention widgets** (``@intervention_widget(key, label, order)``): ``render(model)``
  draws its inputs and returns a list of interventions (empty when switched off);
* **KV-cache policy widgets** (``@kv_policy_widget(key, label, order)``): one is chosen in the
  "KV cache" selector; its ``render(model)`` draws the policy's parameters and returns a
  policy object or a name registered in ``probes.decoding.KV_POLICIES``.

Another page can preset a Playground control through ``st.session_state`` before switching
to the Playground (each preset is consumed once, and switches the control on):

* ``st.session_state["playground_clamp"] = (layer, neuron, value)`` — neuron clamp;
* ``st.session_state["playground_head_mask"] = (layer, head, mode)`` — head mask
  (mode ``"uniform"`` or ``"zero"``);
* ``st.session_state["playground_kv_policy"] = key`` — a registered KV-policy widget key.

Values are validated by the interventions themselves (one ``st.error`` line when out of
range), so widget bounds only guide input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import streamlit as st

from probes.interventions import HeadMask, NeuronClamp

PRESET_CLAMP = "playground_clamp"
PRESET_HEAD_MASK = "playground_head_mask"
PRESET_KV_POLICY = "playground_kv_policy"


@dataclass(frozen=True)
class Widget:
    key: str
    label: str
    render: Callable
    order: int = 50


INTERVENTION_WIDGETS: dict[str, Widget] = {}
KV_POLICY_WIDGETS: dict[str, Widget] = {}


def intervention_widget(key: str, label: str, order: int = 50):
    """Register ``render(model) -> list[Intervention]`` as a Playground control."""

    def deco(fn):
        INTERVENTION_WIDGETS[key] = Widget(key, label, fn, order)
        return fn

    return deco


def kv_policy_widget(key: str, label: str, order: int = 50):
    """Register ``render(model) -> KVPolicy | str`` as a choice of the KV-cache selector."""

    def deco(fn):
        KV_POLICY_WIDGETS[key] = Widget(key, label, fn, order)
        return fn

    return deco


def _ordered(widgets: dict[str, Widget]) -> list[Widget]:
    return sorted(widgets.values(), key=lambda w: (w.order, w.key))


def render_controls(model) -> tuple[list, object]:
    """Draw every registered control; return ``(interventions, kv_policy)``."""
    interventions: list = []
    for w in _ordered(INTERVENTION_WIDGETS):
        with st.container(border=True):
            interventions.extend(w.render(model) or [])
    kv = _ordered(KV_POLICY_WIDGETS)
    preset = st.session_state.pop(PRESET_KV_POLICY, None)
    if preset in KV_POLICY_WIDGETS:
        st.session_state["pg_kv_choice"] = preset
    with st.container(border=True):
        choice = st.selectbox("KV cache (intervened run)", [w.key for w in kv], key="pg_kv_choice",
                              format_func=lambda k: KV_POLICY_WIDGETS[k].label)
        policy = KV_POLICY_WIDGETS[choice].render(model)
    return interventions, policy


def _defaults(**values) -> None:
    for k, v in values.items():
        if k not in st.session_state:
            st.session_state[k] = v


def _apply_preset(name: str, keys: tuple[str, ...], on_key: str) -> None:
    preset = st.session_state.pop(name, None)
    if preset is None:
        return
    for k, v in zip(keys, preset):
        st.session_state[k] = v
    st.session_state[on_key] = True


# ---------------------------------------------------------------------------------------
# Built-in controls


@intervention_widget("head_mask", "Head mask", order=10)
def _head_mask(model) -> list:
    _apply_preset(PRESET_HEAD_MASK, ("pg_mask_layer", "pg_mask_head", "pg_mask_mode"), "pg_mask_on")
    _defaults(pg_mask_on=False, pg_mask_layer=0, pg_mask_head=0, pg_mask_mode="uniform")
    cfg = model.cfg
    on = st.toggle("Mask a head", key="pg_mask_on")
    a, b, c = st.columns([1, 1, 1.4])
    layer = a.number_input(f"Layer (0–{cfg.n_layers - 1})", min_value=0, step=1, key="pg_mask_layer", disabled=not on)
    head = b.number_input(f"Head (0–{cfg.n_heads - 1})", min_value=0, step=1, key="pg_mask_head", disabled=not on)
    mode = c.selectbox("Mode", ["uniform", "zero"], key="pg_mask_mode", disabled=not on,
                       help="uniform: pre-softmax scores zeroed (attend uniformly); zero: head output zeroed")
    return [HeadMask(int(layer), int(head), mode)] if on else []


@intervention_widget("neuron_clamp", "Neuron clamp", order=20)
def _neuron_clamp(model) -> list:
    _apply_preset(PRESET_CLAMP, ("pg_clamp_layer", "pg_clamp_neuron", "pg_clamp_value"), "pg_clamp_on")
    _defaults(pg_clamp_on=False, pg_clamp_layer=0, pg_clamp_neuron=0, pg_clamp_value=0.0)
    cfg = model.cfg
    on = st.toggle("Clamp an MLP neuron", key="pg_clamp_on")
    a, b, c = st.columns(3)
    layer = a.number_input(f"Layer (0–{cfg.n_layers - 1})", min_value=0, step=1, key="pg_clamp_layer", disabled=not on)
    neuron = b.number_input(f"Neuron (0–{cfg.d_mlp - 1})", min_value=0, step=1, key="pg_clamp_neuron", disabled=not on)
    value = c.number_input("Value", step=1.0, key="pg_clamp_value", disabled=not on)
    return [NeuronClamp(int(layer), int(neuron), value=float(value))] if on else []


@kv_policy_widget("full", "Full cache", order=0)
def _full_cache(model):
    st.caption("Keep every key and value (ordinary KV caching).")
    return "full"


# ---------------------------------------------------------------------------------------
# Attention sinks (issue 3): StreamingLLM KV policies and ACT calibration


@kv_policy_widget("sink_window", "Sinks + window (StreamingLLM)", order=10)
def _sink_window(model):
    from probes.kv_policies import SinkWindow

    _defaults(pg_sw_sinks=4, pg_sw_window=60)
    a, b = st.columns(2)
    s = a.number_input("S (sink tokens)", min_value=0, step=1, key="pg_sw_sinks")
    w = b.number_input("W (recent tokens)", min_value=1, step=1, key="pg_sw_window")
    st.caption("Keeps the first S and the last W tokens; positions re-assigned inside the cache. "
               "Generate past S + W to see it stay coherent with a flat cache.")
    return SinkWindow(int(s), int(w))


@kv_policy_widget("window", "Window only", order=20)
def _window_only(model):
    from probes.kv_policies import WindowOnly

    _defaults(pg_wo_window=64)
    w = st.number_input("W (recent tokens)", min_value=1, step=1, key="pg_wo_window")
    st.caption("Keeps only the last W tokens: once the first token is evicted, text degrades.")
    return WindowOnly(int(w))


@intervention_widget("act", "ACT calibration", order=30)
def _act(model) -> list:
    from probes.act import act_interventions

    found = st.session_state.get("act_heads_for_playground")  # set by the Attention sinks page
    _defaults(pg_act_on=False, pg_act_heads=", ".join(f"{l}:{h}" for l, h in found) if found else "",
              pg_act_beta=0.4)
    on = st.toggle("Calibrate hidden sinks (ACT)", key="pg_act_on")
    a, b = st.columns([2, 1])
    text = a.text_input("Heads (L:H, comma-separated)", key="pg_act_heads", disabled=not on)
    beta = b.slider("β", 0.0, 1.0, key="pg_act_beta", step=0.05, disabled=not on)
    if not on:
        return []
    heads = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            l, h = (int(x) for x in part.split(":"))
        except ValueError:
            st.error(f"ACT heads: {part!r} is not LAYER:HEAD.")
            return []
        heads.append((l, h))
    if not heads:
        st.error("ACT calibration is on but no heads are given (e.g. 3:4, 10:2).")
        return []
    return act_interventions(heads, float(beta))
