"""The Playground's KV-cache policies: the full cache, StreamingLLM's sinks + window and the
window alone (Xiao et al. 2023), and RazorAttention (retrieval heads keep their whole cache).
Their parameters are forms of the policies' own dataclasses."""

from __future__ import annotations

import streamlit as st

from mechscope.app import ui
from mechscope.app.specs import parse_heads
from mechscope.app.widgets.handoff import defaults
from mechscope.app.widgets.registry import kv_policy_widget
from mechscope.probes.errors import MechscopeError


@kv_policy_widget("full", "Full cache", order=0)
def full_cache(model):
    st.caption("Keep every key and value (ordinary KV caching).")
    return "full"


@kv_policy_widget("sink_window", "Sinks + window (StreamingLLM)", order=10)
def sink_window(model):
    from mechscope.probes.kv_policies import SinkWindow

    policy = ui.params_form(SinkWindow, key="pg_sw", fields=("n_sink", "window"), columns=2,
                            labels={"n_sink": "S (sink tokens)", "window": "W (recent tokens)"})
    st.caption("Keeps the first S and the last W tokens; positions re-assigned inside the cache. "
               "Generate past S + W to see it stay coherent with a flat cache.")
    return policy


@kv_policy_widget("window", "Window only", order=20)
def window_only(model):
    from mechscope.probes.kv_policies import WindowOnly

    policy = ui.params_form(WindowOnly, key="pg_wo", fields=("window",), columns=1,
                            labels={"window": "W (recent tokens)"})
    st.caption("Keeps only the last W tokens: once the first token is evicted, text degrades.")
    return policy


@kv_policy_widget("razor", "RazorAttention (retrieval heads keep full KV)", order=30)
def razor(model):
    from mechscope.probes.razor import BUFFERS, RazorAttention

    found = st.session_state.get("razor_heads_for_playground")  # set by the Retrieval heads page
    defaults(pg_rz_heads=", ".join(f"{l}:{h}" for l, h in found) if found else "")
    text = st.text_input("Retrieval heads (L:H query heads, comma-separated)", key="pg_rz_heads",
                         help="their KV heads keep the whole cache (GQA: the KV head of each query head)")
    try:
        heads = tuple(parse_heads(text))
    except MechscopeError as exc:
        st.error(f"RazorAttention: {exc} (using the full cache)")
        return "full"
    policy = ui.params_form(
        RazorAttention, key="pg_rz", fields=("buffer", "n_sink", "window", "compression_ratio", "compensation"),
        values={"heads": heads, "head_kind": "query"}, choices={"buffer": BUFFERS}, columns=3,
        labels={"buffer": "Other heads' recent buffer (ratio: max(S0, N/C), the paper's; fixed: W)",
                "n_sink": "S (sink tokens)", "window": "S0 (minimum buffer) / W (fixed buffer)",
                "compression_ratio": "C (compression ratio, buffer ratio)",
                "compensation": "Compensation token (mean of the dropped keys and values)"})
    try:
        policy.validate(model)
    except MechscopeError as exc:
        st.error(f"RazorAttention: {exc} (using the full cache)")
        return "full"
    n = model.cfg.n_ctx
    st.caption(f"Other KV heads keep S + {policy.describe_buffer()}{' + 1' if policy.compensation else ''} entries "
               f"(by masking; positions unchanged): {policy.streaming_entries(n)} at {n} tokens. "
               f"KV memory kept at {n} tokens: {policy.kv_fraction(model, n):.1%}.")
    return policy
