"""Logit lens.

Every layer × position of a prompt decoded through the final norm and the unembedding (or
LLM-Microscope's raw variant), a target token's trajectory across layers, and the
LLM-Microscope metrics (linearity, anisotropy, intrinsic dimension, per-token nonlinearity)
over a text set. Widget defaults come from the analyses' Params.
"""

import streamlit as st

from mechscope.analyses.logit_lens import LogitLensParams, logit_lens
from mechscope.analyses.contextualisation import ContextParams, contextualisation
from mechscope.analyses.microscope import MicroscopeParams, microscope
from mechscope.app import ui
from mechscope.probes.datasets import text_sets

LENS = LogitLensParams()
MICRO = MicroscopeParams()
ID_LABELS = {"reference": "LLM-Microscope (reference: fit on the smallest 20% of μ)",
             "mle": "MLE (N / Σ log μ)", "fit": "Facco fit (largest 10% of μ dropped)"}

st.title("Logit lens")
model, spec = ui.sidebar_model()

prompt = ui.prompt_box(key="ll_prompt", default=LENS.prompt)
c1, c2, c3 = st.columns([2, 2, 1])
target = c1.text_input("Target token (one token, e.g. ' Paris'; empty = the final top-1)", LENS.target or "",
                       key="ll_target")
norm = c2.radio("Decode through", ["final", "raw"], index=["final", "raw"].index(LENS.norm), horizontal=True,
                key="ll_norm",
                format_func=lambda n: "final norm + W_U (logit lens)" if n == "final" else "raw W_U (LLM-Microscope)")
k = c3.number_input("Top k", 1, 20, LENS.k, key="ll_k")
with ui.guard():
    params = LogitLensParams(prompt=prompt, target=target or None, norm=norm, k=int(k))
res = ui.run_analysis("logit_lens", logit_lens, model, params, label="Decoding every layer")
if res is not None:
    last = len(res.tokens) - 1
    c1, c2, c3 = st.columns(3)
    c1.metric("Final top-1 at the last position", repr(res.top_tokens[-1, last, 0]))
    c2.metric(f"Target {res.target_tokens[last]!r}: first layer at top-1", res.first_top1_layer[last])
    c3.metric("p(target) at the last layer", f"{float(res.target_prob[-1, last]):.3f}")
    figs = res.figures()
    st.plotly_chart(figs["top_token_heatmap"], key="ll_heat")
    a, b = st.columns(2)
    a.plotly_chart(figs["target_trajectory"], key="ll_traj")
    b.plotly_chart(figs["kl_to_final"], key="ll_kl")
    with st.expander("Table"):
        st.dataframe(res.to_frame(), hide_index=True)

st.header("LLM-Microscope: linearity, anisotropy, intrinsic dimension")
st.caption("States as the reference's hidden states: embeddings, after blocks 0…L−2, final norm; the extra row "
           "'after block L−1 (pre-norm)' is not in the reference. TwoNN on the first tokens (reference: 4,096).")
sets = text_sets()
c1, c2, c3 = st.columns(3)
text_set = c1.selectbox("Text set", sets, index=sets.index(MICRO.text_set) if MICRO.text_set in sets else 0, key="ll_texts")
max_tokens = c2.number_input("Tokens", 600, 16384, MICRO.total_tokens, step=256, key="ll_max_tokens")
id_method = c3.radio("TwoNN estimator", list(ID_LABELS), index=list(ID_LABELS).index(MICRO.id_method),
                     format_func=ID_LABELS.get, key="ll_id")
with ui.guard():
    mparams = MicroscopeParams(text_set=text_set, total_tokens=int(max_tokens), id_method=id_method)
mres = ui.stored("microscope", mparams, model)
if st.button("Compute the layer metrics", key="ll_micro_run", type="primary"):
    mres = ui.run_analysis("microscope", microscope, model, mparams, label="Forward passes")
if mres is None:
    st.info("Press **Compute the layer metrics** (about a minute on a CPU).")
else:
    mf = mres.figures()
    st.plotly_chart(mf["layer_metrics"], key="ll_layer_metrics")
    a, b = st.columns(2)
    a.plotly_chart(mf["nonlinearity_by_class"], key="ll_by_class")
    b.plotly_chart(mf["most_nonlinear_tokens"], key="ll_top_tokens")
    st.dataframe(mres.to_frame(), hide_index=True)

st.header("LLM-Microscope: contextualisation")
st.caption("How much of its prefix a token's states hold: a linear adapter maps the token's states at every layer to "
           "one input embedding of the frozen model, which must then reconstruct the k preceding tokens (teacher "
           "forced). Score = held-out reconstruction loss (nats; lower = more context); gain = loss of a state-free "
           "control embedding − loss. Texts are split between training and scoring.")
CTX = ContextParams()
c1, c2, c3 = st.columns(3)
ctx_set = c1.selectbox("Text set", sets, index=sets.index(CTX.text_set) if CTX.text_set in sets else 0, key="ll_ctx_texts")
ctx_k = c2.number_input("Prefix tokens k", 1, 32, CTX.prefix, key="ll_ctx_k")
ctx_steps = c3.number_input("Training steps", 10, 5000, CTX.steps, step=50, key="ll_ctx_steps")
with ui.guard():
    cparams = ContextParams(text_set=ctx_set, prefix=int(ctx_k), steps=int(ctx_steps))
cres = ui.stored("contextualisation", cparams, model)
if st.button("Train the adapter and score", key="ll_ctx_run"):
    cres = ui.run_analysis("contextualisation", contextualisation, model, cparams, label="Adapter training")
if cres is None:
    st.info("Press **Train the adapter and score** (a few minutes on a CPU at the defaults; seconds on a GPU).")
else:
    cf = cres.figures()
    a, b = st.columns(2)
    a.plotly_chart(cf["loss_by_distance"], key="ll_ctx_curve")
    b.plotly_chart(cf["loss_by_class"], key="ll_ctx_class")
    st.dataframe(cres.to_frame(), hide_index=True)
