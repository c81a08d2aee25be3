"""Next token and attention.

The prompt's tokens, the model's top-k next tokens (table and bar chart), and one head's
attention pattern (layer and head selectable).
"""

import streamlit as st

from mechscope.analyses.next_token import AttentionPatternParams, NextTokenParams, attention_pattern, next_token
from mechscope.app import ui

DEFAULTS = NextTokenParams()


@st.cache_data(show_spinner=False, max_entries=64)
def _next_token(model_name: str, prompt: str, k: int, bos: bool, _model):
    return next_token(_model, prompt, k=k, prepend_bos=bos)


@st.cache_data(show_spinner=False, max_entries=64)
def _attention(model_name: str, prompt: str, layer: int, head: int, bos: bool, _model):
    return attention_pattern(_model, prompt, layer, head, prepend_bos=bos)


st.title("Next token")
model, spec = ui.sidebar_model()
prompt = ui.prompt_box()
c1, c2 = st.columns([3, 1])
k = c2.slider("Top k", 1, 50, DEFAULTS.k, key="top_k")
with c2:
    bos = ui.bos_toggle(spec)

with ui.guard():
    result = _next_token(spec.name, prompt, k, bos, model)

with c1:
    st.subheader("Prompt tokens")
    ui.show_tokens(result.prompt_tokens, caption=f"{len(result.prompt_tokens)} tokens")

left, right = st.columns(2)
with left:
    st.subheader(f"Top-{k} next tokens")
    table = result.to_frame()
    table["token"] = [repr(t) for t in table["token"]]
    st.table(table.style.format({"prob": "{:.4f}", "logprob": "{:.3f}"}), hide_index=True)
    st.caption(f"Entropy of the next-token distribution: {result.entropy:.3f} nats")
with right:
    st.plotly_chart(result.figures()["top_k"], key="top_k_chart")

st.subheader("Attention pattern")
cfg = model.cfg
a, b = st.columns(2)
layer = a.slider("Layer", 0, cfg.n_layers - 1, AttentionPatternParams().layer, key="attn_layer")
head = b.slider("Head", 0, cfg.n_heads - 1, AttentionPatternParams().head, key="attn_head")
with ui.guard():
    attn = _attention(spec.name, prompt, layer, head, bos, model)
st.plotly_chart(attn.figures()["attention"], key="attention_chart")
