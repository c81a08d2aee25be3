"""Attention sinks.

Gu et al.'s sink metric (α_k by layer × head, Sink_k^ε by k, with/without BOS and with the
first token replaced), hidden sinks (ACT criterion), residual- and value-norm extremes by
position, head dormancy by input domain, StreamingLLM's streaming perplexity, and ACT
calibration. Every computation runs behind a button and is kept for the session; the forms
are generated from the analyses' Params (``SinkParams``, ``StreamingParams``, ``ACTParams``).
"""

import streamlit as st

from mechscope.analyses.act import ACTParams, act_calibration
from mechscope.analyses.sinks import VARIANTS, SinkParams, attention_sinks
from mechscope.analyses.streaming import StreamingParams, streaming_perplexity
from mechscope.app import ui
from mechscope.app.specs import parse_heads
from mechscope.probes.datasets import text_sets

st.title("Attention sinks")
model, spec = ui.sidebar_model()
cfg = model.cfg


# ---------------------------------------------------------------------------------------
st.header("Sink metric, hidden sinks, extreme tokens")
sk_params = ui.params_form(
    SinkParams, key="sk", columns=4,
    fields=("text_set", "n_texts", "max_tokens", "k_max", "eps", "variants", "dormant_threshold", "min_queries"),
    choices={"text_set": text_sets, "variants": VARIANTS},
    labels={"text_set": "Text set", "n_texts": "Texts", "max_tokens": "First T tokens", "k_max": "K (α_1..α_K)",
            "eps": "ε", "variants": "First-token variants", "dormant_threshold": "Dormancy threshold",
            "min_queries": "Min. queries per key"})
eps = sk_params.eps
if st.button("Compute sink metrics", key="sk_run", type="primary"):
    ui.run_analysis("sinks", attention_sinks, model, sk_params)
res = ui.stored("sinks", sk_params, model)
if res is None:
    st.info("Choose the parameters and press **Compute sink metrics** (a few seconds per dozen texts on a CPU).")
else:
    with ui.guard():
        rates = res.sink_rates(eps)
    cols = st.columns(len(res.variants))
    for col, v in zip(cols, res.variants):
        r = rates[(rates.variant == v) & (rates.k == 1)]["sink_rate"].item()
        col.metric(f"Sink_1^{eps:g} · {v}", f"{r:.1f}%")
    tabs = st.tabs(["α by layer × head", "Sink_k by k", "Hidden sinks", "Extreme tokens", "Dormancy"])
    with tabs[0]:
        a, b = st.columns(2)
        k = a.slider("k", 1, res.alpha.shape[-1], 1, key="sk_k_show")
        v = b.selectbox("Variant", list(res.variants), key="sk_variant_show")
        ui.show_figure(res.figure_alpha(k, v), "sk_alpha", key="sk_alpha")
    with tabs[1]:
        ui.show_figure(res.figure_sink_rates(eps), "sk_rates", key="sk_rates")
        ui.show_table(rates.pivot(index="k", columns="variant", values="sink_rate").round(2), "attention_sinks_table1")
    figs = res.figures()
    with tabs[2]:
        st.caption(f"A key is a sink when its mean received attention exceeds {res.params.sink_threshold:g} "
                   "(Yu et al. 2024); sinks after the first are hidden sinks. Only keys seen by at least "
                   f"{res.params.min_queries} queries are judged: near the end of a text the column mean averages "
                   "a handful of queries and would flag keys by position alone. Primary variant: " + res.variants[0])
        ui.show_figure(figs["hidden_sinks_by_head"], "sk_hidden_heads", key="sk_hidden_heads")
        a, b = st.columns(2)
        ui.show_table(res.hidden_by_class(), "attention_sinks_table2", where=a, hide_index=True)
        ui.show_table(res.token_table[res.token_table.sink_occurrences > 0].head(50), "attention_sinks_table3", where=b, hide_index=True)
        if "hidden_sink_tokens" in figs:
            ui.show_figure(figs["hidden_sink_tokens"], "sk_hidden_tokens", key="sk_hidden_tokens")
        ui.show_figure(figs["hidden_sink_positions"], "sk_hidden_pos", key="sk_hidden_pos")
    with tabs[3]:
        if "residual_norm" in figs:
            ui.show_figure(figs["residual_norm"], "sk_resid", key="sk_resid")
            ui.show_figure(figs["residual_norm_lines"], "sk_resid_lines", key="sk_resid_lines")
            ui.show_figure(figs["value_norm"], "sk_value", key="sk_value")
            st.caption("Value norms are per KV head (hook_v)" + (" — query heads share them on this GQA model."
                                                                  if res.value_norm_heads == "kv" else "."))
    with tabs[4]:
        ui.show_figure(figs["dormancy_by_domain"], "sk_dormancy", key="sk_dormancy")
        sw = res.switching_heads()
        st.write(f"Heads dormant on most texts of one domain and active on most of another: {len(sw)}")
        ui.show_table(sw, "attention_sinks_table4", hide_index=True)

# ---------------------------------------------------------------------------------------
st.header("Streaming perplexity")
st.caption("Full attention vs window-only vs sinks + window (StreamingLLM, real KV cache with positions re-assigned) "
           "vs sliding-window recomputation, on the shipped long text.")
sp_params = ui.params_form(StreamingParams, key="sp", fields=("n_tokens", "n_sink", "window", "recompute_every"),
                           labels={"n_tokens": "Tokens of text", "n_sink": "S (sinks)", "window": "W (window)",
                                   "recompute_every": "Recompute every"})
if st.button("Run streaming perplexity", key="sp_run"):
    ui.run_analysis("stream", streaming_perplexity, model, sp_params, label="Streaming")
sres = ui.stored("stream", sp_params, model)
if sres is not None:
    ui.show_figure(sres.figures()["streaming_ppl"], "sp_fig", key="sp_fig")
    ui.show_table(sres.summary().round(3), "attention_sinks_table5", hide_index=True)

# ---------------------------------------------------------------------------------------
st.header("ACT calibration")
st.caption("Hidden-sink columns × β with the mass handed to the other keys (Yu et al. 2024). Heads: typed, or searched "
           "on the calibration split — the reference protocol (each head of layers 2…L−2 calibrated alone, kept when "
           "calibration accuracy rises) or greedy forward selection; the effect is measured on held-out items with "
           "a bootstrap CI.")
heads_txt = st.text_input("Heads (L:H, comma-separated; empty = search)", "", key="act_heads")
with ui.guard():
    act_heads = tuple(parse_heads(heads_txt)) or None
act_params = ui.params_form(ACTParams, key="act", fields=("beta", "search", "max_candidates"), values={"heads": act_heads},
                            labels={"beta": "β", "search": "Search", "max_candidates": "Greedy candidates"})
if st.button("Run ACT", key="act_run"):
    ui.run_analysis("act", act_calibration, model, act_params, label="ACT search")
ares = ui.stored("act", act_params, model)
if ares is not None:
    s = ares.summary
    st.write(f"Heads: {', '.join(f'L{l}H{h}' for l, h in ares.heads) or 'none kept'}")
    m1, m2, m3 = st.columns(3)
    m1.metric("Δ log p(answer)", f"{s['delta_logprob']:+.4f}",
              help=f"95% CI [{s['delta_logprob_ci'][0]:+.4f}, {s['delta_logprob_ci'][1]:+.4f}]")
    m2.metric("Accuracy", f"{s['accuracy_act']:.3f}", f"{s['delta_accuracy']:+.3f}")
    m3.metric("Verdict", s["verdict"])
    for name, fig in ares.figures().items():
        ui.show_figure(fig, f"act_{name}", key=f"act_{name}")
    st.session_state["act_heads_for_playground"] = list(ares.heads)
