"""Next token and attention.

The prompt's tokens, the model's top-k next tokens (table and bar chart), and one head's
attention pattern (layer and head selectable). Long prompts are shown through a window of
positions (a slider), so the page stays light up to the model's context.
"""

import numpy as np
import streamlit as st

from mechscope.analyses.next_token import AttentionPatternParams, NextTokenParams, attention_pattern, next_token
from mechscope.app import ui

DEFAULTS = NextTokenParams()
WINDOW = 128  # attention heatmap: at most WINDOW × WINDOW cells drawn


@st.cache_data(show_spinner=False, max_entries=16)
def _next_token(model_name: str, prompt: str, k: int, bos: bool, _model):
    return next_token(_model, prompt, k=k, prepend_bos=bos)


@st.cache_data(show_spinner=False, max_entries=4)  # a pattern is [T, T]: keep few
def _attention(model_name: str, prompt: str, layer: int, head: int, bos: bool, _model):
    return attention_pattern(_model, prompt, layer, head, prepend_bos=bos)


@st.cache_data(show_spinner=False, max_entries=8)
def _attention_rows(model_name: str, prompt: str, layer: int, head: int, bos: bool, q0: int, size: int, _model):
    """Rows ``q0 … q0+size−1`` of one head's pattern over all keys, with the first key's
    weight for every query: from the layer's post-rotary q and k (``hook_rot_q``/``hook_rot_k``,
    [T, heads, d_head] each), never a [T, T] pattern."""
    import torch

    from mechscope.probes import capture, hooknames
    from mechscope.probes.attention_reductions import Scoring, pattern_blocks, pattern_stats
    from mechscope.probes.prompts import prompt_ids
    from mechscope.probes.tokens import str_tokens

    ids = prompt_ids(_model, prompt, bos)
    qn, kn = hooknames.name("rot_q", layer), hooknames.name("rot_k", layer)
    out = capture.run(_model, [ids], capture=[qn, kn])
    q, k = out.activations[qn][0][None].float(), out.activations[kn][0][None].float()
    scoring = Scoring.of(_model, layer)
    q1 = min(q.shape[1], q0 + size)
    with torch.no_grad():
        _, rows, _ = next(pattern_blocks(q[:, q0:q1], k, scoring, q_offset=q0, block=size))
        first = pattern_stats(q, k, scoring, want=("first",)).first[0, head]
    return str_tokens(_model, ids), rows[0, head].numpy(), first.numpy()


def windowed_attention(tokens, rows, q0: int, layer: int, head: int, size: int = WINDOW):
    """Queries ``q0 …`` (``rows``: their pattern over all keys) against the ``size`` keys
    ending at the last of them; hover gives each cell's tokens. Returns the figure and the
    mean weight these queries put on keys outside the window."""
    import plotly.graph_objects as go

    t = len(tokens)
    q1 = q0 + rows.shape[0]
    k0 = max(0, q1 - size)
    pat = np.asarray(rows[:, k0:q1], dtype=float).copy()
    qs, ks = np.arange(q0, q1), np.arange(k0, q1)
    pat[ks[None, :] > qs[:, None]] = np.nan  # future keys
    outside = 1.0 - np.nansum(pat, axis=1)
    labels = [f"{i}:{tok!r}" for i, tok in enumerate(tokens)]
    hover = [[f"q {labels[q]}<br>k {labels[k]}" for k in ks] for q in qs]
    fig = go.Figure(go.Heatmap(z=pat, x=ks, y=qs, colorscale="Blues", zmin=0.0, zmax=1.0, customdata=hover,
                               hovertemplate="%{customdata}<br>weight %{z:.3f}<extra></extra>",
                               colorbar=dict(title="weight")))
    fig.update_layout(title=f"Attention pattern, layer {layer} head {head}: queries {q0}–{q1 - 1}, "
                            f"keys {k0}–{q1 - 1} of {t}",
                      xaxis=dict(title="key position"), yaxis=dict(title="query position", autorange="reversed"),
                      height=640, margin=dict(l=10, r=10, t=50, b=10))
    return fig, float(np.mean(outside))


st.title("Next token")
model, spec = ui.sidebar_model()
prompt = ui.prompt_box()
c1, c2 = st.columns([3, 1])
k = c2.slider("Top k", 1, 50, DEFAULTS.k, key="top_k")
with c2:
    bos = ui.bos_toggle(spec)

with ui.guard(), ui.model_turn(model, "Next token"):
    result = _next_token(spec.name, prompt, k, bos, model)

with c1:
    st.subheader("Prompt tokens")
    ui.show_tokens(result.prompt_tokens, caption=f"{len(result.prompt_tokens)} tokens", key="nt_tokens")

left, right = st.columns(2)
with left:
    st.subheader(f"Top-{k} next tokens")
    table = result.to_frame()
    table["token"] = [repr(t) for t in table["token"]]
    ui.show_table(table.style.format({"prob": "{:.4f}", "logprob": "{:.3f}"}), "next_token_top_k", static=True,
                  hide_index=True)
    st.caption(f"Entropy of the next-token distribution: {result.entropy:.3f} nats")
with right:
    ui.show_figure(result.figures()["top_k"], "next_token_top_k", key="top_k_chart")

st.subheader("Attention pattern")
cfg = model.cfg
a, b = st.columns(2)
for name, size, key in (("layer", cfg.n_layers, "attn_layer"), ("head", cfg.n_heads, "attn_head")):
    if key not in st.session_state:
        st.session_state[key] = ui.url_index(name, getattr(AttentionPatternParams(), name), size)
layer = a.slider("Layer", 0, cfg.n_layers - 1, key="attn_layer")
head = b.slider("Head", 0, cfg.n_heads - 1, key="attn_head")
ui.set_url("layer", layer)
ui.set_url("head", head)
n_tok = len(result.prompt_tokens)
if n_tok <= WINDOW or cfg.positional_embedding_type != "rotary":
    with ui.guard(), ui.model_turn(model, "Attention pattern"):
        attn = _attention(spec.name, prompt, layer, head, bos, model)
    ui.show_figure(attn.figures()["attention"], f"attention_L{layer}H{head}", key="attention_chart")
else:  # a long prompt: only the window's rows of the pattern are ever made
    q0, _ = ui.window(n_tok, WINDOW, key="attn_window", label="Queries from position")
    with ui.guard(), ui.model_turn(model, "Attention pattern"):
        tokens, rows, first = _attention_rows(spec.name, prompt, layer, head, bos, q0, WINDOW, model)
    fig, outside = windowed_attention(tokens, rows, q0, layer, head)
    ui.show_figure(fig, f"attention_L{layer}H{head}_q{q0}", key="attention_chart")
    st.caption(f"{n_tok} tokens: {WINDOW} queries × {WINDOW} keys shown; on average {outside:.1%} of these queries' "
               f"weight falls on earlier keys outside the window. Whole prompt: mean weight on position 0 "
               f"{float(first.mean()):.3f}.")
