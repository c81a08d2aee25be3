"""Logit lens.

Every layer × position of a prompt decoded through the final norm and the unembedding (or
LLM-Microscope's raw variant), a target token's trajectory across layers, and the
LLM-Microscope metrics (linearity, anisotropy, intrinsic dimension, per-token nonlinearity)
over a text set. The forms are generated from the analyses' Params.
"""

import streamlit as st

from mechscope.analyses.logit_lens import LogitLensParams, logit_lens
from mechscope.analyses.contextualisation import ContextParams, contextualisation
from mechscope.analyses.microscope import MicroscopeParams, microscope
from mechscope.app import ui


st.title("Logit lens")
model, spec = ui.sidebar_model()

prompt = ui.prompt_box(key="ll_prompt", default=ui.default_of(LogitLensParams, "prompt"))
params = ui.params_form(LogitLensParams, key="ll", fields=("target", "norm", "k"), values={"prompt": prompt},
                        columns=3, labels={"target": "Target token (one token, e.g. ' Paris'; empty = the final top-1)",
                                           "norm": "Decode through", "k": "Top k"})
res = ui.run_analysis("logit_lens", logit_lens, model, params, label="Decoding every layer")
if res is not None:
    last = len(res.tokens) - 1
    c1, c2, c3 = st.columns(3)
    c1.metric("Final top-1 at the last position", repr(res.top_tokens[-1, last, 0]))
    c2.metric(f"Target {res.target_tokens[last]!r}: first layer at top-1", res.first_top1_layer[last])
    c3.metric("p(target) at the last layer", f"{float(res.target_prob[-1, last]):.3f}")
    figs = res.figures()
    ui.show_figure(figs["top_token_heatmap"], "ll_heat", key="ll_heat")
    a, b = st.columns(2)
    ui.show_figure(figs["target_trajectory"], "ll_traj", key="ll_traj", where=a)
    ui.show_figure(figs["kl_to_final"], "ll_kl", key="ll_kl", where=b)
    with st.expander("Table"):
        ui.show_table(res.to_frame(), "logit_lens_table1", hide_index=True)

st.header("LLM-Microscope: linearity, anisotropy, intrinsic dimension")
st.caption("States as the reference's hidden states: embeddings, after blocks 0…L−2, final norm; the extra row "
           "'after block L−1 (pre-norm)' is not in the reference. TwoNN on the first tokens (reference: 4,096).")
mparams = ui.params_form(MicroscopeParams, key="ll_micro", fields=("text_set", "total_tokens", "id_method"), columns=3,
                         labels={"text_set": "Text set", "total_tokens": "Tokens",
                                                               "id_method": "TwoNN estimator"})
mres = ui.stored("microscope", mparams, model)
if st.button("Compute the layer metrics", key="ll_micro_run", type="primary"):
    mres = ui.run_analysis("microscope", microscope, model, mparams, label="Forward passes")
if mres is None:
    st.info("Press **Compute the layer metrics** (about a minute on a CPU).")
else:
    mf = mres.figures()
    ui.show_figure(mf["layer_metrics"], "ll_layer_metrics", key="ll_layer_metrics")
    a, b = st.columns(2)
    ui.show_figure(mf["nonlinearity_by_class"], "ll_by_class", key="ll_by_class", where=a)
    ui.show_figure(mf["most_nonlinear_tokens"], "ll_top_tokens", key="ll_top_tokens", where=b)
    ui.show_table(mres.to_frame(), "logit_lens_table2", hide_index=True)

st.header("LLM-Microscope: contextualisation")
st.caption("How much of its prefix a token's states hold: a linear adapter maps the token's states at every layer to "
           "one input embedding of the frozen model, which must then reconstruct the k preceding tokens (teacher "
           "forced). Score = held-out reconstruction loss (nats; lower = more context); gain = loss of a state-free "
           "control embedding − loss. Texts are split between training and scoring.")
cparams = ui.params_form(ContextParams, key="ll_ctx", fields=("text_set", "prefix", "steps"), columns=3,
                         labels={"text_set": "Text set", "prefix": "Prefix tokens k",
                                                               "steps": "Training steps"})
cres = ui.stored("contextualisation", cparams, model)
if st.button("Train the adapter and score", key="ll_ctx_run"):
    cres = ui.run_analysis("contextualisation", contextualisation, model, cparams, label="Adapter training")
if cres is None:
    st.info("Press **Train the adapter and score** (a few minutes on a CPU at the defaults; seconds on a GPU).")
else:
    cf = cres.figures()
    a, b = st.columns(2)
    ui.show_figure(cf["loss_by_distance"], "ll_ctx_curve", key="ll_ctx_curve", where=a)
    ui.show_figure(cf["loss_by_class"], "ll_ctx_class", key="ll_ctx_class", where=b)
    ui.show_table(cres.to_frame(), "logit_lens_table3", hide_index=True)
