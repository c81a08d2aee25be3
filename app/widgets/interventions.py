"""The Playground's built-in intervention controls: head mask, neuron clamp, ACT calibration
(Yu et al. 2024), an SAE latent (steer / clamp / splice) and a saved whitening."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from mechscope.app.specs import parse_heads
from mechscope.app.widgets.handoff import PRESET_CLAMP, PRESET_HEAD_MASK, apply_preset, defaults
from mechscope.app.widgets.registry import intervention_widget
from mechscope.probes.errors import MechscopeError
from mechscope.probes.interventions import HeadMask, NeuronClamp


@intervention_widget("head_mask", "Head mask", order=10)
def head_mask(model) -> list:
    apply_preset(PRESET_HEAD_MASK, ("pg_mask_layer", "pg_mask_head", "pg_mask_mode"), "pg_mask_on")
    defaults(pg_mask_on=False, pg_mask_layer=0, pg_mask_head=0, pg_mask_mode="uniform")
    cfg = model.cfg
    on = st.toggle("Mask a head", key="pg_mask_on")
    a, b, c = st.columns([1, 1, 1.4])
    layer = a.number_input(f"Layer (0–{cfg.n_layers - 1})", min_value=0, step=1, key="pg_mask_layer", disabled=not on)
    head = b.number_input(f"Head (0–{cfg.n_heads - 1})", min_value=0, step=1, key="pg_mask_head", disabled=not on)
    mode = c.selectbox("Mode", ["uniform", "zero"], key="pg_mask_mode", disabled=not on,
                       help="uniform: pre-softmax scores zeroed (attend uniformly); zero: head output zeroed")
    if not on or not _in_range(("Layer", layer, cfg.n_layers), ("Head", head, cfg.n_heads)):
        return []
    return [HeadMask(int(layer), int(head), mode)]


def _in_range(*checks) -> bool:
    """Each (name, value, size) in range, else the one shared message (``ui.check_index``)
    under the control and False."""
    from mechscope.app.ui import check_index

    try:
        for name, value, size in checks:
            check_index(name, value, size)
    except MechscopeError as exc:
        st.error(f"{exc} Not applied.")
        return False
    return True


@intervention_widget("neuron_clamp", "Neuron clamp", order=20)
def neuron_clamp(model) -> list:
    apply_preset(PRESET_CLAMP, ("pg_clamp_layer", "pg_clamp_neuron", "pg_clamp_value"), "pg_clamp_on")
    defaults(pg_clamp_on=False, pg_clamp_layer=0, pg_clamp_neuron=0, pg_clamp_value=0.0)
    cfg = model.cfg
    on = st.toggle("Clamp an MLP neuron", key="pg_clamp_on")
    a, b, c = st.columns(3)
    layer = a.number_input(f"Layer (0–{cfg.n_layers - 1})", min_value=0, step=1, key="pg_clamp_layer", disabled=not on)
    neuron = b.number_input(f"Neuron (0–{cfg.d_mlp - 1})", min_value=0, step=1, key="pg_clamp_neuron", disabled=not on)
    value = c.number_input("Value", step=1.0, key="pg_clamp_value", disabled=not on)
    if not on or not _in_range(("Layer", layer, cfg.n_layers), ("Neuron", neuron, cfg.d_mlp)):
        return []
    return [NeuronClamp(int(layer), int(neuron), value=float(value))]


@intervention_widget("act", "ACT calibration", order=30)
def act(model) -> list:
    from mechscope.probes.act import BETA, act_interventions

    found = st.session_state.get("act_heads_for_playground")  # set by the Attention sinks page
    defaults(pg_act_on=False, pg_act_heads=", ".join(f"{l}:{h}" for l, h in found) if found else "",
             pg_act_beta=BETA)
    on = st.toggle("Calibrate hidden sinks (ACT)", key="pg_act_on")
    a, b = st.columns([2, 1])
    text = a.text_input("Heads (L:H, comma-separated)", key="pg_act_heads", disabled=not on)
    beta = b.slider("β", 0.0, 1.0, key="pg_act_beta", step=0.05, disabled=not on)
    if not on:
        return []
    try:
        heads = parse_heads(text)
    except MechscopeError as exc:
        st.error(f"ACT heads: {exc}")
        return []
    if not heads:
        st.error("ACT calibration is on but no heads are given (e.g. 3:4, 10:2).")
        return []
    return act_interventions(heads, float(beta))


def _fitting_saes(model) -> dict[str, dict]:
    """Shipped SAEs of the sidebar's model whose input width is the model's d_model."""
    from mechscope.app.ui import current_model_name
    from mechscope.saes.store import manifest, shipped_names

    entries = manifest()["saes"]
    return {n: entries[n] for n in shipped_names()
            if n.split("/")[0] == current_model_name() and entries[n].get("d_in") == model.cfg.d_model}


@intervention_widget("sae", "SAE latent (steer / clamp / splice)", order=30)
def sae(model) -> list:
    from mechscope.saes.interventions import SaeClamp, SaeSplice, SaeSteer

    saes = _fitting_saes(model)
    if not saes:
        st.caption("SAE interventions: no shipped SAE fits this model.")
        return []
    defaults(pg_sae_on=False, pg_sae_mode="steer", pg_sae_latent=0, pg_sae_value=20.0, pg_sae_error=False)
    on = st.toggle("Edit an SAE latent", key="pg_sae_on")
    a, b, c, d = st.columns([1.6, 1, 1, 1])
    name = a.selectbox("SAE", list(saes), key="pg_sae_name", disabled=not on)
    mode = b.selectbox("Mode", ["steer", "clamp", "splice"], key="pg_sae_mode", disabled=not on,
                       help="steer: add value × the latent's decoder direction; clamp: set the latent (error term "
                            "kept); splice: replace the activation by the SAE reconstruction")
    last = int(saes[name]["d_sae"]) - 1
    latent = c.number_input(f"Latent (0–{last})", min_value=0, step=1, key="pg_sae_latent",
                            disabled=not on or mode == "splice")
    if mode == "splice":
        error = d.checkbox("keep error term", key="pg_sae_error", disabled=not on)
        return [SaeSplice(name, error_term=bool(error))] if on else []
    value = d.number_input("Value", step=1.0, key="pg_sae_value", disabled=not on)
    if not on or not _in_range(("Latent", latent, last + 1)):
        return []
    cls = SaeSteer if mode == "steer" else SaeClamp
    return [cls(name, int(latent), float(value))]


@intervention_widget("whitening", "Whitening (saved artefact)", order=40)
def whitening(model) -> list:
    from mechscope.probes.whitening import Whitening

    defaults(pg_wh_on=False, pg_wh_path="", pg_wh_strength=1.0)
    on = st.toggle("Whiten the residual stream", key="pg_wh_on",
                   help="a whitening fitted on the Isotropy page (or `mechscope isotropy-whitening --save-dir`)")
    a, b = st.columns([3, 1])
    path = a.text_input("Whitening file (.safetensors)", key="pg_wh_path", disabled=not on)
    strength = b.slider("Strength", 0.0, 1.0, key="pg_wh_strength", step=0.05, disabled=not on)
    if not on:
        return []
    if not path:
        st.error("Whitening is on but no file is given.")
        return []
    try:
        side = Path(path).with_name(Path(path).name + ".sha256")
        digest = side.read_text().split()[0] if side.is_file() else ""
        iv = Whitening(path, digest, float(strength))
        iv.validate(model)
    except (MechscopeError, OSError) as exc:
        st.error(f"Whitening: {exc}")
        return []
    return [iv]
