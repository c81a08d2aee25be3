"""Isotropy.

IsoScore and IsoScore* (Rudman et al.), average random cosine, Mu & Viswanath's partition
score, Su & Collier's within-sequence isotropy and outlier dimensions — per depth of the
residual stream, per head output, for W_E and W_U — the spectrum, outlier dimensions and a
2-D PCA of one depth's cloud, whitening (a fitted, saved whitening can be sent to the
Playground as an intervention), contrastive search beside greedy and sampling, and Rudman
et al.'s sanity clouds. Widget defaults are
``IsotropyParams``'.
"""

import streamlit as st

from mechscope.analyses.isotropy import (
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
from mechscope.app.interventions_ui import send_to_playground
from mechscope.probes.whitening import Whitening

P, W, D = IsotropyParams(), WhiteningParams(), DecodingIsotropyParams()

st.title("Isotropy")
model, spec = ui.sidebar_model()

c1, c2, c3, c4 = st.columns(4)
text_set = c1.selectbox("Text set", ["mixed", "prose", "code", "numbers"], key="iso_text_set")
n_texts = c2.number_input("Texts", 1, 288, P.n_texts, key="iso_n_texts")
max_tokens = c3.number_input("Tokens per text", 2, 1024, P.max_tokens, step=16, key="iso_T")
n_sample = c4.number_input("Sampled tokens per layer", 2, 20000, P.n_sample, step=100, key="iso_sample",
                           help="average cosine, partition score and PCA use this seeded sample; IsoScore uses every token")
c5, c6, c7, c8 = st.columns(4)
zeta = c5.slider("IsoScore* ζ", 0.0, 1.0, P.zeta, 0.05, key="iso_zeta")
c0 = c6.selectbox("IsoScore* C0", ["scaled_identity", "identity"], key="iso_c0")
multiple = c7.number_input("Outlier multiple", 1.5, 100.0, P.outlier_multiple, key="iso_multiple")
heads = c8.toggle("Per-head outputs", P.heads, key="iso_heads")
with ui.guard():
    params = IsotropyParams(text_set=text_set, n_texts=int(n_texts), max_tokens=int(max_tokens), n_sample=int(n_sample),
                            zeta=float(zeta), c0=c0, outlier_multiple=float(multiple), heads=bool(heads))
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
        st.plotly_chart(res.figure_curves(), key="iso_curves")
    with tabs[1]:
        if res.heads().empty:
            st.info("Per-head outputs were not scored.")
        else:
            score = st.selectbox("Score", ["isoscore", "isoscore_z", "isoscore_star", "avg_cosine", "self_similarity"],
                                 key="iso_head_score")
            st.plotly_chart(res.figure_heads(score), key="iso_heads_fig")
    n_depth = res.pca.shape[0]
    with tabs[2]:
        depth = st.slider("Depth (0 = embeddings)", 0, n_depth - 1, n_depth - 1, key="iso_depth")
        st.plotly_chart(res.figure_spectrum(depth), key="iso_spectrum")
        st.plotly_chart(res.figure_outliers(depth), key="iso_outliers")
        st.dataframe(res.outliers(depth), hide_index=True)
    with tabs[3]:
        d2 = st.slider("Depth", 0, n_depth - 1, n_depth - 1, key="iso_pca_depth")
        st.plotly_chart(res.figure_pca(d2), key="iso_pca")
    with tabs[4]:
        if res.weights().empty:
            st.info("W_E and W_U were not scored.")
        else:
            st.plotly_chart(res.figure_weights(), key="iso_weights")
            st.dataframe(res.weights(), hide_index=True)
    with tabs[5]:
        st.dataframe(res.scores, hide_index=True)

st.header("Whitening: fitted on one text set, applied to another")
c1, c2, c3, c4 = st.columns(4)
w_depth = c1.number_input(f"Depth (0–{model.cfg.n_layers})", 0, model.cfg.n_layers, model.cfg.n_layers, key="wh_depth")
w_fit = c2.selectbox("Fit on", ["mixed", "prose", "code", "numbers"], key="wh_fit")
w_apply = c3.selectbox("Apply to", ["mixed", "prose", "code", "numbers"], key="wh_apply",
                       help="the same set: disjoint texts (even ones fit, odd ones are held out)")
w_n = c4.number_input("Texts per set", 1, 144, W.n_texts, key="wh_n")
c5, c6 = st.columns([3, 2])
w_methods = c5.multiselect("Methods", ["zca", "zipfian", "outlier_removal"], list(W.methods), key="wh_methods")
w_save = c6.text_input("Save fitted whitenings to (folder, optional)", "", key="wh_save",
                       help="safetensors + sha256 per method; load one in the Playground's Whitening control")
with ui.guard():
    w_params = WhiteningParams(depth=int(w_depth), text_set=w_fit, apply_text_set=w_apply, n_texts=int(w_n),
                               methods=tuple(w_methods), max_tokens=int(max_tokens), save_dir=w_save or None)
if st.button("Fit and apply whitening", key="wh_run"):
    ui.run_analysis("whitening", whitening_effect, model, w_params)
wres = ui.stored("whitening", w_params, model)
if wres is not None:
    st.caption(f"Site {wres.site}; outlier dimensions removed: {list(wres.removed_dims)}. ZCA/Zipfian make the "
               "fitting set's covariance the identity on the span of its points (cov_distance_to_identity).")
    figs = wres.figures()
    st.plotly_chart(figs["scores"], key="wh_scores")
    st.plotly_chart(figs["pca"], key="wh_pca")
    st.dataframe(wres.scores, hide_index=True)
    for m, a in wres.artefacts.items():
        code, send = st.columns([4, 1])
        code.code(f"{m}: {a['path']}  sha256 {a['sha256']}")
        if send.button("Send to the Playground", key=f"wh_send_{m}",
                       help="applied there as an intervention on the residual stream at this site"):
            send_to_playground([Whitening(a["path"], a["sha256"])],
                               note=f"{m} whitening at {wres.site} (from the Isotropy page)")
            st.success(f"Sent: open the Playground to generate with the {m} whitening.")
    if not wres.artefacts:
        st.caption("Give a folder to save the fitted whitenings in: each saved one can be sent to the Playground.")

st.header("Contrastive search beside greedy and sampling")
c1, c2, c3, c4 = st.columns(4)
d_alpha = c1.slider("α", 0.0, 1.0, D.alpha, 0.05, key="cs_alpha")
d_k = c2.number_input("k", 1, 20, D.k, key="cs_k")
d_n = c3.number_input("Prose prefixes", 1, 32, D.n_texts, key="cs_n")
d_new = c4.number_input("New tokens", 4, 256, D.max_new_tokens, key="cs_new")
with ui.guard():
    d_params = DecodingIsotropyParams(alpha=float(d_alpha), k=int(d_k), n_texts=int(d_n), max_new_tokens=int(d_new))
if st.button("Generate and compare", key="cs_run"):
    ui.run_analysis("decoding_isotropy", decoding_isotropy, model, d_params, label="Generations")
dres = ui.stored("decoding_isotropy", d_params, model)
if dres is not None:
    st.dataframe(dres.summary().round(3), hide_index=True)
    figs = dres.figures()
    a, b = st.columns(2)
    a.plotly_chart(figs["repetition"], key="cs_rep")
    b.plotly_chart(figs["diversity_isotropy"], key="cs_div")
    with st.expander("Generations"):
        for name, i, text in dres.texts:
            st.markdown(f"**{name}**, prompt {i}: {ui.md_escape(text)}")
st.caption("Contrastive search is also a decoding strategy in the Playground (sidebar → strategy).")

st.header("Rudman et al.'s sanity clouds")
st.caption("An isotropic Gaussian scores 1, all variance in one dimension 0, k of n dimensions used equally "
           "(k−1)/(n−1). Shifting the mean or rescaling leaves IsoScore alone; the average cosine and the "
           "partition score move.")
st.plotly_chart(figure_rudman(), key="iso_rudman")
st.dataframe(rudman_table(), hide_index=True)
