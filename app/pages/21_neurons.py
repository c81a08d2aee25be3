"""Neurons.

Every MLP neuron decoded through the unembedding by a named method — the paper's
(up-projection → LM head, Davies et al. 2025) or the write direction (W_out → final norm →
unembedding); every table says which. Search by token, a neuron card with its decoded tokens,
activation histogram and max-activating contexts, a clamp that regenerates in the
Playground, and the Voita et al. taxonomy over a text set.
"""

from pathlib import Path

import streamlit as st

from mechscope.analyses.neurons import (
    ActivityParams,
    DecodeParams,
    MaxActParams,
    SearchParams,
    decode_neurons,
    max_activating,
    method_label,
    neuron_activity,
    neurons_for_token,
    resolve_method,
)
from mechscope.app import ui
from mechscope.app.widgets import PRESET_CLAMP
from streamlit.errors import StreamlitAPIException

st.title("Neurons")
model, spec = ui.sidebar_model()
cfg = model.cfg


@st.cache_resource(show_spinner="Decoding every MLP neuron (once per set of weights: kept in the disk cache)…")
def _decoded(model_name: str, method: str):
    return decode_neurons(model, DecodeParams(method=method))


method = st.radio("Labelling method", ["write", "paper"], horizontal=True, key="nr_method",
                  index=["write", "paper"].index(ui.default_of(DecodeParams, "method")),
                  format_func=lambda m: method_label(m, *resolve_method(m)))
with ui.guard():
    dec = _decoded(spec.name, method)
st.caption(f"Labels below: {dec.method}. The two methods agree on the top token for only a small share of "
           "neurons on this model (see benchmarks/RESULTS.md), so a label always names its method.")

st.header("Search by token")
search = ui.params_form(SearchParams, key="nr_search", fields=("token", "top"), values={"method": method}, columns=2,
                        labels={"token": "Token or string (mind the leading space: ' dog')", "top": "Neurons"})
with ui.guard():
    hits = neurons_for_token(model, search).table
ui.show_table(hits.drop(columns=["query_tokens"]), "neurons_table1", hide_index=True)

st.header("Neuron card")
first = hits.iloc[0] if len(hits) else None
c1, c2 = st.columns(2)
layer = ui.index_input(c1, "Layer", cfg.n_layers, int(first["layer"]) if first is not None else 0, key="nr_layer")
neuron = ui.index_input(c2, "Neuron", cfg.d_mlp, int(first["neuron"]) if first is not None else 0, key="nr_neuron")
with ui.guard():
    ui.show_table(dec.card(layer, neuron), "neurons_table2", hide_index=True)

ma_params = ui.params_form(MaxActParams, key="nr_maxact", fields=("text_set", "n_texts"), columns=2,
                           values={"layer": layer, "neuron": neuron},
                           labels={"text_set": "Text set", "n_texts": "Texts (empty: all)"})
if st.button("Max-activating contexts", key="nr_maxact"):
    ui.run_analysis("nr_maxact", max_activating, model, ma_params)
mres = ui.stored("nr_maxact", ma_params, model)
if mres is not None:
    ui.show_figure(mres.figures()["activation_histogram"], "nr_hist", key="nr_hist")
    ui.show_table(mres.contexts, "neurons_table3", hide_index=True)
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
tx_params = ui.params_form(ActivityParams, key="nr_tax", fields=("text_set", "threshold", "n_texts"), columns=3,
                           labels={"text_set": "Text set", "threshold": "Firing threshold on |activation|",
                                   "n_texts": "Texts (empty: all)"})
if st.button("Compute the taxonomy", key="nr_tax_run", type="primary"):
    ui.run_analysis("nr_tax", neuron_activity, model, tx_params)
tres = ui.stored("nr_tax", tx_params, model)
if tres is not None:
    ui.show_figure(tres.figures()["taxonomy_by_layer"], "nr_tax_fig", key="nr_tax_fig")
    cat = st.selectbox("Show", list(tres.CATEGORIES[1:]), key="nr_tax_cat")
    ui.show_table(tres.neurons(cat), "neurons_table4", hide_index=True)
else:
    st.info("Press **Compute the taxonomy** (one forward pass over the texts, statistics kept per neuron).")
