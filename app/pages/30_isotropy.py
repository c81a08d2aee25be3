"""Isotropy.

IsoScore and IsoScore* (Rudman et al.), average random cosine, Mu & Viswanath's partition
score, Su & Collier's within-sequence isotropy and outlier dimensions — per depth of the
residual stream, per head output, for W_E and W_U — the spectrum, outlier dimensions and a
2-D PCA of one depth's cloud, whitening (a fitted, saved whitening can be sent to the
Playground as an intervention), contrastive search beside greedy and sampling, and Rudman
et al.'s sanity clouds. The forms are generated from the analyses' Params.
"""

import streamlit as st

from mechscope.analyses.isotropy import (
    C0_CHOICES,
    DecodingIsotropyParams,
    IsotropyParams,
    WhiteningParams,
    decoding_isotropy,
    figure_rudman,
    isotropy,
    rudman_table,
    whitening_effect,
)
from mechscope.app import ui
from mechscope.app.widgets.handoff import send_whitening
from mechscope.probes.datasets import text_sets
from mechscope.probes.whitening import METHODS as WHITENINGS

st.title("Isotropy")
model, spec = ui.sidebar_model()

params = ui.params_form(
    IsotropyParams, key="iso",
    fields=("text_set", "n_texts", "max_tokens", "n_sample", "zeta", "c0", "outlier_multiple", "heads"),
    choices={"text_set": text_sets, "c0": C0_CHOICES},
    labels={"text_set": "Text set", "n_texts": "Texts", "max_tokens": "Tokens per text",
            "n_sample": "Sampled tokens per layer", "zeta": "IsoScore* ζ", "c0": "IsoScore* C0",
            "outlier_multiple": "Outlier multiple", "heads": "Per-head outputs"})
if st.button("Compute isotropy", key="iso_run", type="primary"):
    ui.run_analysis("isotropy", isotropy, model, params)
res = ui.stored("isotropy", params, model)
if res is None:
    st.info("Choose the parameters and press **Compute isotropy**.")
else:
    last = res.resid().iloc[-1]
    m = st.columns(4)
    m[0].metric("IsoScore, last layer", f"{last.isoscore:.4f}")
    m[1].metric("Average cosine, last layer", f"{last.avg_cosine:.3f}")
    m[2].metric("Su & Collier isotropy, last layer", f"{last.isotropy_su:.3f}")
    m[3].metric("Tokens", res.n_tokens)
    tabs = st.tabs(["Scores by layer", "Heads", "Spectrum & outliers", "PCA", "W_E / W_U", "Table"])
    with tabs[0]:
        ui.show_figure(res.figure_curves(), "iso_curves", key="iso_curves")
    with tabs[1]:
        if res.heads().empty:
            st.info("Per-head outputs were not scored.")
        else:
            score = st.selectbox("Score", ["isoscore", "isoscore_z", "isoscore_star", "avg_cosine", "self_similarity"],
                                 key="iso_head_score")
            ui.show_figure(res.figure_heads(score), "iso_heads_fig", key="iso_heads_fig")
    n_depth = res.pca.shape[0]
    with tabs[2]:
        depth = st.slider("Depth (0 = embeddings)", 0, n_depth - 1, n_depth - 1, key="iso_depth")
        ui.show_figure(res.figure_spectrum(depth), "iso_spectrum", key="iso_spectrum")
        ui.show_figure(res.figure_outliers(depth), "iso_outliers", key="iso_outliers")
        ui.show_table(res.outliers(depth), "isotropy_table1", hide_index=True)
    with tabs[3]:
        d2 = st.slider("Depth", 0, n_depth - 1, n_depth - 1, key="iso_pca_depth")
        ui.show_figure(res.figure_pca(d2), "iso_pca", key="iso_pca")
    with tabs[4]:
        if res.weights().empty:
            st.info("W_E and W_U were not scored.")
        else:
            ui.show_figure(res.figure_weights(), "iso_weights", key="iso_weights")
            ui.show_table(res.weights(), "isotropy_table2", hide_index=True)
    with tabs[5]:
        ui.show_table(res.scores, "isotropy_table3", hide_index=True)

st.header("Whitening: fitted on one text set, applied to another")
w_params = ui.params_form(
    WhiteningParams, key="wh", fields=("depth", "text_set", "apply_text_set", "n_texts", "methods", "save_dir"),
    values={"max_tokens": params.max_tokens}, columns=3,
    choices={"apply_text_set": text_sets, "methods": WHITENINGS},
    labels={"depth": f"Depth (0–{model.cfg.n_layers}; empty: the last)", "text_set": "Fit on",
            "apply_text_set": "Apply to", "n_texts": "Texts per set", "methods": "Methods",
            "save_dir": "Save fitted whitenings to (folder, optional)"})
if st.button("Fit and apply whitening", key="wh_run"):
    ui.run_analysis("whitening", whitening_effect, model, w_params)
wres = ui.stored("whitening", w_params, model)
if wres is not None:
    st.caption(f"Site {wres.site}; outlier dimensions removed: {list(wres.removed_dims)}. ZCA/Zipfian make the "
               "fitting set's covariance the identity on the span of its points (cov_distance_to_identity).")
    figs = wres.figures()
    ui.show_figure(figs["scores"], "wh_scores", key="wh_scores")
    ui.show_figure(figs["pca"], "wh_pca", key="wh_pca")
    ui.show_table(wres.scores, "isotropy_table4", hide_index=True)
    for m, a in wres.artefacts.items():
        code, send = st.columns([4, 1])
        code.code(f"{m}: {a['path']}  sha256 {a['sha256']}")
        if send.button("Send to the Playground", key=f"wh_send_{m}",
                       help="switches on the Playground's whitening control with this file (its Strength slider "
                            "beside it; full strength at a late depth often collapses the continuation)"):
            send_whitening(a["path"], 1.0)
            st.switch_page("pages/02_playground.py")
    if not wres.artefacts:
        st.caption("Give a folder to save the fitted whitenings in: each saved one can be sent to the Playground.")

st.header("Contrastive search beside greedy and sampling")
d_params = ui.params_form(DecodingIsotropyParams, key="cs", fields=("alpha", "k", "n_texts", "max_new_tokens"),
                          labels={"alpha": "α", "n_texts": "Prose prefixes", "max_new_tokens": "New tokens"})
if st.button("Generate and compare", key="cs_run"):
    ui.run_analysis("decoding_isotropy", decoding_isotropy, model, d_params, label="Generations")
dres = ui.stored("decoding_isotropy", d_params, model)
if dres is not None:
    ui.show_table(dres.summary().round(3), "isotropy_table5", hide_index=True)
    figs = dres.figures()
    a, b = st.columns(2)
    ui.show_figure(figs["repetition"], "cs_rep", key="cs_rep", where=a)
    ui.show_figure(figs["diversity_isotropy"], "cs_div", key="cs_div", where=b)
    with st.expander("Generations"):
        for name, i, text in dres.texts:
            st.markdown(f"**{name}**, prompt {i}: {ui.md_escape(text)}")
st.caption("Contrastive search is also a decoding strategy in the Playground (sidebar → strategy).")

st.header("Rudman et al.'s sanity clouds")
st.caption("An isotropic Gaussian scores 1, all variance in one dimension 0, k of n dimensions used equally "
           "(k−1)/(n−1). Shifting the mean or rescaling leaves IsoScore alone; the average cosine and the "
           "partition score move.")
ui.show_figure(figure_rudman(), "iso_rudman", key="iso_rudman")
ui.show_table(rudman_table(), "isotropy_table6", hide_index=True)
