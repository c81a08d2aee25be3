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

Any page can also hand over arbitrary registered interventions and a decoding strategy as
data: ``send_to_playground(interventions=[...], strategy=...)`` (stored as ``to_dict()``
data, rebuilt through the registries, shown in a "Sent from another page" box with a
switch). Decoding strategies have their own registry (``@strategy_widget``), drawn by
``render_strategy``.

Values are validated by the interventions themselves (one ``st.error`` line when out of
range), so widget bounds only guide input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import streamlit as st

from mechscope.app.specs import parse_heads
from mechscope.probes.errors import MechscopeError
from mechscope.probes.interventions import HeadMask, NeuronClamp

SENT = "playground_sent"
PRESET_STRATEGY = "playground_strategy"
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
STRATEGY_WIDGETS: dict[str, Widget] = {}


def strategy_widget(key: str, label: str, order: int = 50):
    """Register ``render(model) -> Strategy`` as a choice of the decoding selector."""

    def deco(fn):
        STRATEGY_WIDGETS[key] = Widget(key, label, fn, order)
        return fn

    return deco


def send_to_playground(interventions=(), strategy=None, note: str = "") -> None:
    """Hand registered interventions (and optionally a strategy) to the Playground as data."""
    st.session_state[SENT] = {
        "interventions": [iv.to_dict() for iv in interventions],
        "strategy": strategy.to_dict() if strategy is not None else None,
        "note": note,
    }


def _sent(model) -> list:
    from mechscope.probes.interventions import from_dict

    sent = st.session_state.get(SENT)
    if not sent or not sent.get("interventions"):
        return []
    try:
        ivs = [from_dict(d) for d in sent["interventions"]]
    except MechscopeError as exc:
        st.error(f"Sent interventions: {exc}")
        return []
    with st.container(border=True):
        on = st.toggle(f"Sent from another page: {len(ivs)} intervention(s)", value=True, key="pg_sent_on")
        st.caption((sent.get("note") or "") + " — " + "; ".join(iv.describe() for iv in ivs[:12])
                   + (" …" if len(ivs) > 12 else ""))
        if st.button("Discard", key="pg_sent_discard"):
            st.session_state.pop(SENT, None)
            st.rerun()
    return ivs if on else []


def render_strategy(model):
    """The decoding selector: returns the chosen strategy object."""
    from mechscope.probes.decoding import STRATEGIES

    preset = st.session_state.pop(PRESET_STRATEGY, None)
    sent = st.session_state.get(SENT) or {}
    if sent.get("strategy") is not None:  # consumed once: it becomes a choice of the selector
        st.session_state["pg_sent_strategy"] = sent["strategy"]
        st.session_state[SENT] = {**sent, "strategy": None}
        preset = "sent"
    widgets = _ordered(STRATEGY_WIDGETS)
    keys = [w.key for w in widgets]
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
    interventions: list = list(_sent(model))
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


@strategy_widget("greedy", "greedy", order=0)
def _greedy(model):
    from mechscope.probes.decoding import Greedy

    return Greedy()


@strategy_widget("sample", "sampling", order=10)
def _sampling(model):
    from mechscope.probes.decoding import Sample

    sb = st.sidebar
    return Sample(
        temperature=sb.slider("Temperature", 0.05, 2.0, 1.0, 0.05, key="pg_temperature"),
        top_k=sb.number_input("Top-k (0 = off)", min_value=0, value=50, step=1, key="pg_top_k") or None,
        top_p=sb.slider("Top-p", 0.05, 1.0, 0.95, 0.05, key="pg_top_p"),
        seed=int(sb.number_input("Seed", min_value=0, value=0, step=1, key="pg_seed")),
    )


@kv_policy_widget("full", "Full cache", order=0)
def _full_cache(model):
    st.caption("Keep every key and value (ordinary KV caching).")
    return "full"


# ---------------------------------------------------------------------------------------
# Attention sinks (issue 3): StreamingLLM KV policies and ACT calibration


@kv_policy_widget("sink_window", "Sinks + window (StreamingLLM)", order=10)
def _sink_window(model):
    from mechscope.probes.kv_policies import SinkWindow

    _defaults(pg_sw_sinks=4, pg_sw_window=60)
    a, b = st.columns(2)
    s = a.number_input("S (sink tokens)", min_value=0, step=1, key="pg_sw_sinks")
    w = b.number_input("W (recent tokens)", min_value=1, step=1, key="pg_sw_window")
    st.caption("Keeps the first S and the last W tokens; positions re-assigned inside the cache. "
               "Generate past S + W to see it stay coherent with a flat cache.")
    return SinkWindow(int(s), int(w))


@kv_policy_widget("window", "Window only", order=20)
def _window_only(model):
    from mechscope.probes.kv_policies import WindowOnly

    _defaults(pg_wo_window=64)
    w = st.number_input("W (recent tokens)", min_value=1, step=1, key="pg_wo_window")
    st.caption("Keeps only the last W tokens: once the first token is evicted, text degrades.")
    return WindowOnly(int(w))


@intervention_widget("act", "ACT calibration", order=30)
def _act(model) -> list:
    from mechscope.probes.act import act_interventions

    found = st.session_state.get("act_heads_for_playground")  # set by the Attention sinks page
    _defaults(pg_act_on=False, pg_act_heads=", ".join(f"{l}:{h}" for l, h in found) if found else "",
              pg_act_beta=0.4)
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


@intervention_widget("sae", "SAE latent (steer / clamp / splice)", order=30)
def _sae(model) -> list:
    from mechscope.saes.interventions import SaeClamp, SaeSplice, SaeSteer
    from mechscope.saes.store import shipped_names

    names = [n for n in shipped_names() if n.startswith("smollm2-135m/")]
    if model.cfg.d_model != 576 or not names:
        st.caption("SAE interventions: the shipped SAEs are for smollm2-135m.")
        return []
    _defaults(pg_sae_on=False, pg_sae_mode="steer", pg_sae_latent=0, pg_sae_value=20.0, pg_sae_error=False)
    on = st.toggle("Edit an SAE latent", key="pg_sae_on")
    a, b, c, d = st.columns([1.6, 1, 1, 1])
    name = a.selectbox("SAE", names, key="pg_sae_name", disabled=not on)
    mode = b.selectbox("Mode", ["steer", "clamp", "splice"], key="pg_sae_mode", disabled=not on,
                       help="steer: add value × the latent's decoder direction; clamp: set the latent (error term "
                            "kept); splice: replace the activation by the SAE reconstruction")
    latent = c.number_input("Latent (0–4095)", min_value=0, max_value=4095, step=1, key="pg_sae_latent",
                            disabled=not on or mode == "splice")
    if mode == "splice":
        error = d.checkbox("keep error term", key="pg_sae_error", disabled=not on)
        return [SaeSplice(name, error_term=bool(error))] if on else []
    value = d.number_input("Value", step=1.0, key="pg_sae_value", disabled=not on)
    if not on:
        return []
    cls = SaeSteer if mode == "steer" else SaeClamp
    return [cls(name, int(latent), float(value))]


@strategy_widget("decore", "DeCoRe (retrieval heads masked)", order=40)
def _decore(model):
    from mechscope.probes.decore import DeCoRe

    sb = st.sidebar
    heads = sb.text_input("Retrieval heads (L:H, …)", "", key="pg_decore_heads",
                          help="the masked model masks these heads (uniform attention); the reference masks the top "
                               "50; see the Retrieval heads page")
    entropy_guided = sb.toggle("Entropy-guided α", True, key="pg_decore_entropy")
    alpha = None if entropy_guided else float(sb.slider("α", 0.0, 2.0, 0.5, 0.05, key="pg_decore_alpha"))
    scope = sb.selectbox("Mask heads during", ["decode", "prompt_and_decode"], key="pg_decore_scope",
                         help="decode: the prompt is prefilled once unmasked and the masked model continues from "
                              "it (the reference); prompt_and_decode: the masked model masks the prompt too")
    return DeCoRe(tuple(parse_heads(heads)), alpha=alpha, mask_scope=scope)


# ---------------------------------------------------------------------------------------
# Retrieval heads (issue 8): RazorAttention head-aware KV cache


@kv_policy_widget("razor", "RazorAttention (retrieval heads keep full KV)", order=30)
def _razor(model):
    from mechscope.probes.razor import RazorAttention

    found = st.session_state.get("razor_heads_for_playground")  # set by the Retrieval heads page
    _defaults(pg_rz_heads=", ".join(f"{l}:{h}" for l, h in found) if found else "", pg_rz_sinks=4,
              pg_rz_window=60, pg_rz_buffer="ratio", pg_rz_ratio=5.0, pg_rz_comp=True)
    text = st.text_input("Retrieval heads (L:H query heads, comma-separated)", key="pg_rz_heads",
                         help="their KV heads keep the whole cache (GQA: the KV head of each query head)")
    buffer = st.radio("Other heads' recent buffer", ["ratio", "fixed"], key="pg_rz_buffer", horizontal=True,
                      format_func={"ratio": "max(S0, N/C) (the paper's)", "fixed": "fixed window W"}.get,
                      help="RazorAttention keeps L = max(S0, N/C) recent tokens of a head holding N; fixed: W tokens")
    a, b, c = st.columns(3)
    s = a.number_input("S (sink tokens)", min_value=0, step=1, key="pg_rz_sinks")
    w = b.number_input("S0 (minimum buffer)" if buffer == "ratio" else "W (recent tokens)", min_value=0, step=1,
                       key="pg_rz_window")
    ratio = c.number_input("C (compression ratio)", min_value=1.0, step=0.5, key="pg_rz_ratio",
                           disabled=buffer != "ratio")
    comp = st.toggle("Compensation token (mean of the dropped keys and values)", key="pg_rz_comp")
    try:
        policy = RazorAttention(tuple(parse_heads(text)), n_sink=int(s), window=int(w), compensation=comp,
                                head_kind="query", buffer=buffer, compression_ratio=float(ratio))
        policy.validate(model)
    except MechscopeError as exc:
        st.error(f"RazorAttention: {exc} (using the full cache)")
        return "full"
    n = model.cfg.n_ctx
    st.caption(f"Other KV heads keep S + {policy.describe_buffer()}{' + 1' if comp else ''} entries (by masking; "
               f"positions unchanged): {policy.streaming_entries(n)} at {n} tokens. "
               f"KV memory kept at {n} tokens: {policy.kv_fraction(model, n):.1%}.")
    return policy

# ---------------------------------------------------------------------------------------
# Isotropy (issue 9): contrastive search and whitening


@strategy_widget("contrastive", "contrastive search", order=20)
def _contrastive(model):
    from mechscope.probes.contrastive import Contrastive

    sb = st.sidebar
    alpha = sb.slider("α (degeneration penalty)", 0.0, 1.0, 0.6, 0.05, key="pg_cs_alpha")
    k = sb.number_input("k (candidates)", min_value=1, max_value=50, value=4, step=1, key="pg_cs_k")
    sb.caption("Su et al. 2022: among the top-k, argmax (1−α)·p(v) − α·max cos(h_v, h_j); α = 0 is greedy.")
    return Contrastive(float(alpha), int(k))


@intervention_widget("whitening", "Whitening (saved artefact)", order=40)
def _whitening(model) -> list:
    from mechscope.probes.whitening import Whitening

    _defaults(pg_wh_on=False, pg_wh_path="", pg_wh_strength=1.0)
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
        from pathlib import Path

        side = Path(path).with_name(Path(path).name + ".sha256")
        digest = side.read_text().split()[0] if side.is_file() else ""
        iv = Whitening(path, digest, float(strength))
        iv.validate(model)
    except (MechscopeError, OSError) as exc:
        st.error(f"Whitening: {exc}")
        return []
    return [iv]
