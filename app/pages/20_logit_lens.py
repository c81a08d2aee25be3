"""Logit lens.

Every layer × position of a prompt decoded through the final norm and the unembedding (or
LLM-Microscope's raw variant), a target token's trajectory across layers, and the
LLM-Microscope metrics (linearity, anisotropy, TwoNN intrinsic dimension — the reference
estimator by default —, a contextualisation proxy, per-token nonlinearity) over a text set.
Widget defaults are ``LogitLensParams`` and ``MicroscopeParams``.
"""

import streamlit as st

from analyses.logit_lens import LogitLensParams, logit_lens
from analyses.microscope import TWONN_METHODS, MicroscopeParams, microscope
from app import ui

LL, MP = LogitLensParams(), MicroscopeParams()

st.title("Logit lens")
model, spec = ui.sidebar_model()


@st.cache_data(show_spinner="Decoding every layer…", max_entries=16)
def _lens(model_name: str, prompt: str, target, norm: str, k: int):
    return logit_lens(model, LogitLensParams(prompt=prompt, target=target or None, norm=norm, k=k))


prompt = ui.prompt_box(key="ll_prompt")
c1, c2, c3 = st.columns([2, 2, 1])
target = c1.text_input("Target token (one token, e.g. ' Paris'; empty = the final top-1)", "", key="ll_target")
norm = c2.radio("Decode through", ["final", "raw"], horizontal=True, key="ll_norm",
                format_func=lambda n: "final norm + W_U (logit lens)" if n == "final" else "raw W_U (LLM-Microscope)")
k = c3.number_input("Top k", 1, 20, LL.k, key="ll_k")
with ui.guard():
    res = _lens(spec.name, prompt, target, norm, int(k))
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
c1, c2, c3 = st.columns(3)
text_set = c1.selectbox("Text set", ["mixed", "prose", "code", "numbers"], key="ll_texts")
max_tokens = c2.number_input("Tokens", 600, 16384, MP.max_tokens, step=256, key="ll_max_tokens")
id_method = c3.radio("TwoNN estimator", list(TWONN_METHODS), index=list(TWONN_METHODS).index(MP.id_method),
                     horizontal=True, key="ll_id",
                     help="reference: LLM-Microscope's (smallest fifth of μ, ties kept in the CDF); mle; fit (Facco)")
with ui.guard():
    mp = MicroscopeParams(texts=text_set, max_tokens=int(max_tokens), id_method=id_method)
if st.button("Compute the layer metrics", key="ll_micro_run", type="primary"):
    ui.run_analysis("ll_micro", microscope, model, mp)
mres = ui.stored("ll_micro", mp, model)
if mres is None:
    st.info("Press **Compute the layer metrics** (tens of seconds on a CPU).")
else:
    st.caption("Rows as in LLM-Microscope: embeddings, the state after each block, the final *normed* state; the "
               "pre-norm output of the last block is an extra, labelled row. Contextualisation is a linear proxy "
               "(held-out R² of recovering the mean past embedding), not the paper's trained prefix decoder.")
    mf = mres.figures()
    st.plotly_chart(mf["layer_metrics"], key="ll_layer_metrics")
    a, b = st.columns(2)
    a.plotly_chart(mf["nonlinearity_by_class"], key="ll_by_class")
    b.plotly_chart(mf["most_nonlinear_tokens"], key="ll_top_tokens")
    st.dataframe(mres.to_frame(), hide_index=True)
