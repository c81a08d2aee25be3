"""Circuits.

Circuit discovery on the shipped clean/corrupted tasks: activation patching of every head as the
ground truth, attribution patching, EAP-IG (Hanna et al. 2024) and the discrete-SAE method
(O'Neill & Bui 2024; by default the reference's one SAE over all heads), compared by node
ROC-AUC; the circuit as a graph, the patching heatmap, the faithfulness curve, and "send to the
Playground" (ablate the circuit / keep only the circuit). Below it, edge circuits of the whole
residual graph scored as the MIB circuit track scores them (``circuit_edges``): faithfulness
curves with bootstrap bands beside the random baseline, CPR / CMD, and the circuit graph at a
chosen size. The forms are generated from ``CircuitCompareParams`` and ``EdgeCircuitParams``.
"""

import numpy as np
import streamlit as st

from mechscope.analyses.circuits import (ALL_TASKS, ANCHORS, EDGE_METHODS, TASKS, CircuitCompareParams, EdgeCircuitParams, circuit_compare,
                                        circuit_edges, edge_circuit_graph)
from mechscope.app import ui
from mechscope.app.widgets import send_to_playground
from mechscope.probes.interventions import HeadMask

st.title("Circuits")
model, spec = ui.sidebar_model()
cfg = model.cfg


def edge_section():
    """Edge circuits (MIB circuit track): curves, CPR / CMD, the circuit at a chosen size."""
    st.header("Edge circuits (MIB circuit track)")
    if not st.toggle("Show edge circuits: every edge of the residual graph, scored by faithfulness as MIB does",
                     key="ce_show"):
        return
    ep = ui.params_form(
        EdgeCircuitParams, key="ce", choices={"task": ALL_TASKS, "methods": EDGE_METHODS},
        fields=("task", "n_prompts", "n_eval", "methods", "ablation", "ig_steps", "n_random"),
        labels={"task": "Task", "n_prompts": "Attribution pairs", "n_eval": "Evaluation pairs", "methods": "Methods",
                "ablation": "Ablation", "ig_steps": "EAP-IG steps", "n_random": "Random rankings"})
    if st.button("Score edge circuits", key="ce_run"):
        ui.run_analysis("circuit_edges", circuit_edges, model, ep, label="Circuits")
    er = ui.stored("circuit_edges", ep, model)
    if er is None:
        st.info("Press **Score edge circuits**: every method ranks every edge (input, heads' q/k/v inputs, MLPs, "
                "logits); the top 0.1–100% of edges are kept and the rest ablated (several minutes on a CPU).")
        return
    st.caption(f"{er.n_attr} attribution pairs, {er.n_evaluated} other evaluation pairs; m(full) = {er.m_full:.2f}, "
               f"m(empty) = {er.m_empty:.2f}.")
    efigs = er.figures()
    t1, t2, t3 = st.tabs(["Faithfulness curves", "Circuit graph", "CPR / CMD"])
    with t1:
        st.plotly_chart(efigs["faithfulness_cpr"], key="ce_curve_cpr")
        st.plotly_chart(efigs["faithfulness_cmd"], key="ce_curve_cmd")
        st.caption("Bands: 95% bootstrap intervals over the evaluation prompts. Dashed: random edge rankings.")
    with t2:
        if er.scored:
            m = st.selectbox("Method", list(er.scored), key="ce_graph_m")
            pct = st.select_slider("Circuit size (% of edges)", options=list(er.params.percentages), value=1.0
                                   if 1.0 in er.params.percentages else er.params.percentages[0], key="ce_graph_pct")
            st.plotly_chart(edge_circuit_graph(er.circuit(m, pct), title=f"{m}: top {pct:g}% of edges"), key="ce_graph")
    with t3:
        st.dataframe(er.summary.round(3), hide_index=True)
        st.dataframe(er.curves.round(3), hide_index=True)

params = ui.params_form(
    CircuitCompareParams, key="ci", choices={"task": TASKS},
    fields=("task", "n_prompts", "ig_steps", "epochs", "n_latents", "l1", "edge_top_n", "shared"),
    labels={"task": "Task", "n_prompts": "Prompt pairs", "ig_steps": "EAP-IG steps", "epochs": "SAE epochs",
            "n_latents": "SAE latents", "l1": "SAE L1", "edge_top_n": "Edges among the top-N heads (0 = none)",
            "shared": "One SAE shared by all heads (the reference)"})
task = params.task
if st.button("Compare methods", key="ci_run", type="primary"):
    ui.run_analysis("circuits", circuit_compare, model, params, label="Patching sweep")
res = ui.stored("circuits", params, model)
if res is None:
    st.info("Choose a task and press **Compare methods** (patching sweep, attribution patching, EAP-IG and the "
            "discrete-SAE method; about a minute per 16 prompt pairs on a CPU).")
    edge_section()
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
        st.switch_page("pages/02_playground.py")
    if b.button("Send to the Playground: keep only the circuit", key="ci_send_keep"):
        keep = set(heads)
        rest = [HeadMask(l, h, "zero") for l in range(cfg.n_layers) for h in range(cfg.n_heads) if (l, h) not in keep]
        send_to_playground(rest, note=f"{task}: only the {k}-head circuit kept ({method})")
        st.switch_page("pages/02_playground.py")
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

edge_section()
