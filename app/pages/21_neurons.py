"""Neurons.

Every MLP neuron decoded through the unembedding (Davies et al. 2025): search by token, a
neuron card with its decoded tokens, activation histogram and max-activating contexts, a
clamp that regenerates in the Playground, and the Voita et al. taxonomy over a text set.
"""

from pathlib import Path

import streamlit as st

from analyses.neurons import decode_neurons, max_activating, neuron_activity, neurons_for_token
from app import ui
from app.interventions_ui import PRESET_CLAMP
from streamlit.errors import StreamlitAPIException

st.title("Neurons")
model, spec = ui.sidebar_model()
cfg = model.cfg


@st.cache_resource(show_spinner="Decoding every MLP neuron (once per process)…")
def _decoded(model_name: str, norm: str, direction: str):
    return decode_neurons(model, k=10, norm=norm, direction=direction)


c1, c2 = st.columns(2)
norm = c1.radio("Unembedding", ["final", "raw"], horizontal=True, key="nr_norm",
                format_func=lambda n: "γ of the final norm folded in" if n == "final" else "raw W_U")
direction = c2.radio("Neuron direction", ["out", "up", "gate"] if cfg.gated_mlp else ["out", "up"], horizontal=True,
                     key="nr_dir", help="out: what the neuron writes (W_out row); up/gate: what it reads (the "
                                        "paper's up-projection variant)")
with ui.guard():
    dec = _decoded(spec.name, norm, direction)

st.header("Search by token")
c1, c2 = st.columns([3, 1])
query = c1.text_input("Token or string (mind the leading space: ' dog')", " dog", key="nr_query")
top = c2.number_input("Neurons", 1, 200, 20, key="nr_top")
with ui.guard():
    hits = neurons_for_token(model, query, top=int(top), norm=norm, direction=direction)
st.dataframe(hits.drop(columns=["query_tokens"]), hide_index=True)

st.header("Neuron card")
first = hits.iloc[0] if len(hits) else None
c1, c2 = st.columns(2)
layer = c1.number_input("Layer", 0, cfg.n_layers - 1, int(first["layer"]) if first is not None else 0, key="nr_layer")
neuron = c2.number_input("Neuron", 0, cfg.d_mlp - 1, int(first["neuron"]) if first is not None else 0, key="nr_neuron")
layer, neuron = int(layer), int(neuron)
with ui.guard():
    st.dataframe(dec.card(layer, neuron), hide_index=True)

c1, c2 = st.columns(2)
text_set = c1.selectbox("Text set", ["mixed", "prose", "code", "numbers"], key="nr_texts")
n_texts = c2.number_input("Texts", 4, 288, 48, step=4, key="nr_n_texts")
akey = (spec.name, layer, neuron, text_set, int(n_texts))
if st.button("Max-activating contexts", key="nr_maxact"):
    bar = st.progress(0.0, text="Forward passes")
    with ui.guard():
        st.session_state["nr_maxact_res"] = (akey, max_activating(
            model, layer, neuron, texts=text_set, max_texts=int(n_texts),
            progress=lambda d, t: bar.progress(min(d / max(t, 1), 1.0), text=f"Forward passes {d}/{t}")))
slot = st.session_state.get("nr_maxact_res")
if slot is not None and slot[0] == akey:
    mres = slot[1]
    st.plotly_chart(mres.figures()["activation_histogram"], key="nr_hist")
    st.dataframe(mres.contexts, hide_index=True)
    default_clamp = float(max(5.0, 2 * abs(mres.contexts["activation"].max())))
else:
    default_clamp = 10.0

st.subheader("Clamp and regenerate")
value = st.slider("Clamp value", -50.0, 100.0, min(100.0, default_clamp), 0.5, key="nr_clamp_value")
if st.button("Clamp this neuron in the Playground", key="nr_clamp"):
    st.session_state[PRESET_CLAMP] = (layer, neuron, float(value))  # consumed by the Playground
    playground = Path(__file__).resolve().parent / "02_playground.py"
    try:
        st.switch_page(str(playground))
    except StreamlitAPIException:  # no navigation (a page run on its own): say where to go
        st.success(f"The Playground will regenerate with L{layer}N{neuron} = {value:g}: open it from the sidebar.")

st.header("Taxonomy (Voita et al.)")
c1, c2, c3 = st.columns(3)
threshold = c1.number_input("Firing threshold", 0.0, 50.0, 0.5, 0.1, key="nr_thr",
                            help="silu(gate)·up is never exactly 0; a neuron fires when it exceeds this")
tx_texts = c2.number_input("Texts", 4, 288, 48, step=4, key="nr_tax_n")
tx_set = c3.selectbox("Text set ", ["mixed", "prose", "code", "numbers"], key="nr_tax_set")
tkey = (spec.name, float(threshold), int(tx_texts), tx_set)
if st.button("Compute the taxonomy", key="nr_tax_run", type="primary"):
    bar = st.progress(0.0, text="Forward passes")
    with ui.guard():
        st.session_state["nr_tax"] = (tkey, neuron_activity(
            model, texts=tx_set, threshold=float(threshold), max_texts=int(tx_texts),
            progress=lambda d, t: bar.progress(min(d / max(t, 1), 1.0), text=f"Forward passes {d}/{t}")))
slot = st.session_state.get("nr_tax")
if slot is not None and slot[0] == tkey:
    tres = slot[1]
    st.plotly_chart(tres.figures()["taxonomy_by_layer"], key="nr_tax_fig")
    cat = st.selectbox("Show", list(tres.CATEGORIES[1:]), key="nr_tax_cat")
    st.dataframe(tres.neurons(cat), hide_index=True)
else:
    st.info("Press **Compute the taxonomy** (one forward pass over the texts, statistics kept per neuron).")
