"""Handing data from another page to the Playground.

``send_to_playground(interventions=[...], strategy=...)`` stores registered interventions and
a decoding strategy as ``to_dict()`` data; the Playground rebuilds them through the
registries and shows them in a "Sent from another page" box with a switch.

One-shot presets (each consumed once; it switches its control on):

* ``st.session_state[PRESET_CLAMP] = (layer, neuron, value)`` — neuron clamp;
* ``st.session_state[PRESET_HEAD_MASK] = (layer, head, mode)`` — head mask (``"uniform"`` or
  ``"zero"``);
* ``st.session_state[PRESET_KV_POLICY] = key`` — a registered KV-policy widget key;
* ``st.session_state[PRESET_STRATEGY] = key`` — a registered strategy widget key;
* ``st.session_state[PRESET_WHITENING] = (path, strength)`` — a saved whitening, into the
  Playground's whitening control (its Strength slider beside it: a whitening of the last
  residual depth at full strength flattens the directions the unembedding reads, and the
  continuation often collapses to one repeated token such as a newline).
"""

from __future__ import annotations

import streamlit as st

from mechscope.probes.errors import MechscopeError

SENT = "playground_sent"
PRESET_STRATEGY = "playground_strategy"
PRESET_CLAMP = "playground_clamp"
PRESET_HEAD_MASK = "playground_head_mask"
PRESET_KV_POLICY = "playground_kv_policy"
PRESET_WHITENING = "playground_whitening"
WHITENING_KEYS = ("pg_wh_path", "pg_wh_strength")  # the Playground whitening control's widgets
WHITENING_ON = "pg_wh_on"


def send_whitening(path: str, strength: float = 1.0) -> None:
    """Hand a saved whitening (its file; the digest is read from ``path.sha256`` there) to the
    Playground's whitening control, switched on, with ``strength``."""
    st.session_state[PRESET_WHITENING] = (str(path), float(strength))


def send_to_playground(interventions=(), strategy=None, note: str = "") -> None:
    """Hand registered interventions (and optionally a strategy) to the Playground as data."""
    st.session_state[SENT] = {
        "interventions": [iv.to_dict() for iv in interventions],
        "strategy": strategy.to_dict() if strategy is not None else None,
        "note": note,
    }


def sent_interventions(model) -> list:
    """The interventions sent from another page, in a box with an on/off switch (empty when
    none were sent or the switch is off)."""
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


def take_sent_strategy() -> bool:
    """Move a sent strategy into the strategy selector's choices (once); True if one came."""
    sent = st.session_state.get(SENT) or {}
    if sent.get("strategy") is None:
        return False
    st.session_state["pg_sent_strategy"] = sent["strategy"]
    st.session_state[SENT] = {**sent, "strategy": None}
    return True


def defaults(**values) -> None:
    """Session-state values for widgets that have none yet."""
    for k, v in values.items():
        if k not in st.session_state:
            st.session_state[k] = v


def apply_preset(name: str, keys: tuple[str, ...], on_key: str) -> None:
    """Copy a one-shot preset tuple into the widgets ``keys`` and switch ``on_key`` on."""
    preset = st.session_state.pop(name, None)
    if preset is None:
        return
    for k, v in zip(keys, preset):
        st.session_state[k] = v
    st.session_state[on_key] = True
