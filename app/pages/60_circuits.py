"""Circuits.

Circuit discovery on the shipped clean/corrupted tasks: activation patching of every head as the
ground truth, attribution patching, EAP-IG (Hanna et al. 2024) and the discrete-SAE method
(O'Neill & Bui 2024; by default the reference's one SAE over all heads), compared by node
ROC-AUC; the circuit as a graph, the patching heatmap, the faithfulness curve, and "send to the
Playground" (ablate the circuit / keep only the circuit).
Widget defaults are ``CircuitCompareParams``' own.
"""

import numpy as np
import streamlit as st

from mechscope.analyses.circuits import ANCHORS, TASKS, CircuitCompareParams, circuit_compare
from mechscope.app import ui
from mechscope.app.interventions_ui import send_to_playground
from mechscope.probes.interventions import HeadMask

CP = CircuitCompareParams()

st.title("Circuits")
model, spec = ui.sidebar_model()
cfg = model.cfg

c1, c2, c3, c4 = st.columns(4)
task = c1.selectbox("Task", list(TASKS), index=list(TASKS).index(CP.task), key="ci_task")
n_prompts = c2.number_input("Prompt pairs", 1, 64, CP.n_prompts, key="ci_n")
ig_steps = c3.number_input("EAP-IG steps", 1, 32, CP.ig_steps, key="ci_ig")
epochs = c4.number_input("SAE epochs", 10, 2000, CP.epochs, step=50, key="ci_epochs")
c5, c6, c7, c8 = st.columns(4)
latents = c5.number_input("SAE latents", 4, 1024, CP.n_latents, key="ci_latents")
l1 = c6.number_input("SAE L1", 0.0, 1.0, CP.l1, step=0.005, format="%.3f", key="ci_l1")
top_n = c7.number_input("Edges among the top-N heads (0 = none)", 0, 40, CP.edge_top_n, key="ci_edges",
                        help="Path patching of every head pair among the N heads with the largest patching effect")
shared = c8.checkbox("One SAE shared by all heads (the reference)", CP.shared, key="ci_shared",
                     help="On: one SAE over every head's d_model output (O'Neill & Bui's code). Off: per-head SAEs, "
                          "one per head on its own output space (our variant; its codes differ from the reference's).")

with ui.guard():
    params = CP.replace(task=task, n_prompts=int(n_prompts), ig_steps=int(ig_steps), epochs=int(epochs),
                        n_latents=int(latents), l1=float(l1), shared=bool(shared), edge_top_n=int(top_n))
if st.button("Compare methods", key="ci_run", type="primary"):
    ui.run_analysis("circuits", circuit_compare, model, params, label="Patching sweep")
res = ui.stored("circuits", params, model)
if res is None:
    st.info("Choose a task and press **Compare methods** (patching sweep, attribution patching, EAP-IG and the "
            "discrete-SAE method; about a minute per 16 prompt pairs on a CPU).")
    st.stop()

ch = res.check
m1, m2, m3 = st.columns(3)
m1.metric("Clean prompts right", f"{ch['frac_positive']:.0%}")
m2.metric("Mean logit diff (clean)", f"{ch['mean_ld_clean']:.2f}")
m3.metric("Mean logit diff (corrupted)", f"{ch['mean_ld_corrupt']:.2f}")
figs = res.figures()
tabs = st.tabs(["Circuit graph", "ROC curves", "Patching heatmap", "Faithfulness", "Table"])
with tabs[0]:
    method = st.selectbox("Ranking", list(res.methods), index=list(res.methods).index("discrete_sae"), key="ci_graph_m")
    from mechscope.analyses.circuits import circuit_graph

    mi = res.methods.index(method)
    st.plotly_chart(circuit_graph(res.scores[mi], res.edge_matrix(method), res.truth, res.top_codes), key="ci_graph")
    if res.has_edges and method != "discrete_sae":
        st.caption(f"Edges: {method}'s scores of the {len(res.edges)} head pairs among the top-{res.params.edge_top_n} "
                   "patching heads (path patching = the edge ground truth).")
    k = st.slider("Circuit size (top heads)", 1, cfg.n_layers * cfg.n_heads, min(10, cfg.n_layers * cfg.n_heads), key="ci_k")
    order = np.argsort(-res.scores[mi].ravel())[:k]
    heads = [divmod(int(i), cfg.n_heads) for i in order]
    a, b = st.columns(2)
    if a.button("Send to the Playground: ablate the circuit", key="ci_send_ablate"):
        send_to_playground([HeadMask(l, h, "zero") for l, h in heads], note=f"{task}: circuit of {k} heads ablated ({method})")
        st.success(f"{k} head masks sent; open the Playground.")
    if b.button("Send to the Playground: keep only the circuit", key="ci_send_keep"):
        keep = set(heads)
        rest = [HeadMask(l, h, "zero") for l in range(cfg.n_layers) for h in range(cfg.n_heads) if (l, h) not in keep]
        send_to_playground(rest, note=f"{task}: only the {k}-head circuit kept ({method})")
        st.success(f"{len(rest)} head masks sent; open the Playground.")
with tabs[1]:
    st.plotly_chart(figs["roc"], key="ci_roc")
    if "edge_roc" in figs:
        st.plotly_chart(figs["edge_roc"], key="ci_edge_roc")
        st.caption("Edge ground truth: path patching (the sender's corrupted output reaches only the receiver's "
                   "q/k/v inputs; K/V ungrouped so a query head is patched alone).")
with tabs[2]:
    st.plotly_chart(figs["patching"], key="ci_patch")
    st.caption("Noising: each head's output on the clean prompts replaced by its output on the corrupted ones; "
               "colour = fraction of the clean–corrupted logit-difference gap it moves.")
with tabs[3]:
    st.plotly_chart(figs["faithfulness"], key="ci_faith")
    st.caption("keep: every head outside the top-k mean-ablated (mean over corrupted prompts and positions); "
               "ablate: the top-k alone mean-ablated.")
with tabs[4]:
    st.dataframe(res.auc_table(anchors=True).round(3), hide_index=True)
    if res.has_edges:
        st.caption("Scored edges: path-patching effect (fraction of the gap) and every method's score:")
        st.dataframe(res.edge_frame().round(4), hide_index=True)
    st.caption("Runtime of each method in this run (patching = the ground-truth sweep):")
    st.dataframe(res.timing_table().round(2), hide_index=True)
    st.caption("Their numbers (their models — IOI, greater-than: GPT-2 small; docstring: attn-only-4l — and "
               "published circuits, not this model). O'Neill & Bui's \"edge AUC\" (pair_node_auc) is a node AUC: "
               "the heads of their top head pairs against the node circuit; ACDC's edge_auc is over edges.")
    import pandas as pd

    st.dataframe(pd.DataFrame(ANCHORS), hide_index=True)
    st.caption("Ground-truth heads the discrete-SAE method ranks lowest:")
    st.dataframe(res.missed(), hide_index=True)
