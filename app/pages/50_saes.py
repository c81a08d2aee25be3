"""SAEs.

Residual-stream sparse autoencoders (SAE-Lens TopK): the eval table,
a latent browser (top contexts, activation histogram, logit effects), text → latent heat,
"which latents promote token X", steering into the Playground, first-letter absorption and the
geometry of the decoder directions.
"""

import pandas as pd
import plotly.express as px
import streamlit as st

from mechscope.app import ui
from mechscope.app.widgets import send_to_playground
from mechscope.saes.absorption import METHODS as ABSORPTION_METHODS
from mechscope.saes.absorption import AbsorptionParams, absorption
from mechscope.saes.features import SaeFeaturesParams, latents_for_token, latents_on_text, logit_effects, sae_features
from mechscope.saes.geometry import SaeGeometryParams, sae_geometry
from mechscope.saes.interventions import SaeClamp, SaeSteer
from mechscope.saes.store import load_sae
from mechscope.saes.store import manifest, shipped_names

st.title("SAEs")
model, spec = ui.sidebar_model()
names = [n for n in shipped_names() if n.split("/")[0] == spec.name]
if not names:
    st.info(f"No shipped SAE is for {spec.name}; the shipped ones are for "
            f"{', '.join(sorted({n.split('/')[0] for n in shipped_names()}))}: pick it in the sidebar.")
    st.stop()

st.header("Shipped SAEs: held-out evals per domain")
m = manifest()
rows = [{"sae": n, "domain": d, "L0": ev["l0"], "EV (every position)": ev["explained_variance"],
         "CE recovered (every position)": ev["ce_recovered"], "EV (pos ≥ 1)": ev["explained_variance_skip0"],
         "CE recovered (pos ≥ 1)": ev["ce_recovered_skip0"], "dead on domain": ev["dead_fraction"],
         "tokens": ev["tokens"]}
        for n in names for d, ev in m["saes"][n]["eval_domains"].items()]
evals = pd.DataFrame(rows)
ev_grid = evals.pivot(index="sae", columns="domain", values="EV (pos ≥ 1)").loc[names, list(evals["domain"].unique())]
st.plotly_chart(px.imshow(ev_grid, text_auto=".3f", color_continuous_scale="RdYlGn", zmin=0.8, zmax=1.0,
                          labels={"color": "EV (pos ≥ 1)"}, title="Explained variance per held-out domain (pos ≥ 1)"),
                use_container_width=True)
st.dataframe(evals, hide_index=True, column_config={
    "L0": st.column_config.NumberColumn(format="%.1f"),
    **{c: st.column_config.NumberColumn(format="%.3f") for c in evals.columns if c not in ("sae", "domain", "tokens", "L0")}})
dead = ", ".join(f"{n.split('/')[-1]} {m['saes'][n]['dead_all']:.1%}" for n in names)
st.caption(f"Trained on {m['training']['tokens']:,} tokens of the general corpus (generations, literature, documentation, "
           f"code, tables); evaluated on the shipped held-out sets of each domain (data/sae_eval), weights as stored "
           f"({m['saes'][names[0]]['eval_dtype']}). SAE-Lens' protocol splices and scores every position; pos ≥ 1 leaves "
           f"position 0 (the attention sink) alone, as in training. Targets: EV ≥ 0.90 and CE recovered ≥ 0.95 on every "
           f"domain, L0 ≤ 64, dead ≤ 5%. Dead on every domain: {dead}. `mechscope sae eval` re-measures.")

default_sae = ui.default_of(SaeFeaturesParams, "sae")
name = st.selectbox("SAE", names, index=names.index(default_sae) if default_sae in names else 0, key="sae_name")
with ui.guard():
    sae = load_sae(name, model=model, cached=True)

st.header("Latent browser")
params = ui.params_form(SaeFeaturesParams, key="sae_feat", fields=("text_set", "n_texts"), values={"sae": name}, columns=2,
                        labels={"text_set": "Text set", "n_texts": "Texts"})
feats = ui.stored("sae_features", params, model)
if feats is None and st.button("Compute feature pages (one pass over the texts)", key="sae_go"):
    feats = ui.run_analysis("sae_features", sae_features, model, params, label="Texts")
if feats is not None:
    st.plotly_chart(feats.figures()["density"], use_container_width=True)
    c1, c2 = st.columns(2)
    by = c1.radio("Pick latents by", ["top activation", "density"], horizontal=True, key="sae_by")
    order = feats.to_frame().sort_values("top_act" if by == "top activation" else "density", ascending=False)
    latent = ui.index_input(c2, "Latent", sae.cfg.d_sae, int(order.iloc[0]["latent"]), key="sae_latent")
    with ui.guard():
        le = logit_effects(model, sae, [latent])
        from mechscope.probes.tokens import str_tokens

        st.markdown("**Promotes:** " + ui.md_escape(" · ".join(repr(t) for t in str_tokens(model, le["top_ids"][0]))))
        st.markdown("**Suppresses:** " + ui.md_escape(" · ".join(repr(t) for t in str_tokens(model, le["bottom_ids"][0]))))
        st.plotly_chart(feats.latent_histogram(latent), use_container_width=True)
        st.dataframe(feats.contexts(model, latent), hide_index=True)
    c1, c2, c3 = st.columns(3)
    how = c1.radio("Send to the Playground", ["steer", "clamp"], horizontal=True, key="sae_how")
    value = c2.number_input("Value", -2000.0, 2000.0, float(min(2000.0, max(10.0, feats.max_act[latent]))),
                            key=f"sae_value_{name}_{latent}")  # one per latent: never another latent's value
    if c3.button("Send", key="sae_send"):
        iv = SaeSteer(name, latent, float(value)) if how == "steer" else SaeClamp(name, latent, float(value))
        send_to_playground([iv], note=f"{iv.describe()} (from the SAEs page)")
        st.switch_page("pages/02_playground.py")

st.header("Which latents fire on this text")
text = ui.prompt_box("Text", key="sae_text", default="def add(a, b):\n    return a + b")
with ui.guard():
    toks, acts, table = latents_on_text(model, sae, text)
    st.dataframe(table, hide_index=True)
    if len(table):
        pick = int(st.selectbox("Latent heat", table["latent"].tolist(), key="sae_heat"))
        ui.show_tokens(toks, acts[:, pick].tolist(), caption=f"latent {pick}: activation per token")

st.header("Which latents promote a token")
tok = st.text_input("Token (mind the leading space)", " return", key="sae_tok")
with ui.guard():
    st.dataframe(latents_for_token(model, sae, tok), hide_index=True)

st.header("Feature absorption (first letter)")
aparams = ui.params_form(AbsorptionParams, key="sae_abs", fields=("n_words", "method"), values={"saes": (name,)},
                         columns=2, choices={"method": ABSORPTION_METHODS},
                         labels={"n_words": "Words (0: every letters-only token, as SAEBench; slow on a CPU)",
                                 "method": "Main latents"})
ab = ui.stored("sae_absorption", aparams, model)
if ab is None and st.button("Run the absorption eval", key="sae_abs_go"):
    ab = ui.run_analysis("sae_absorption", absorption, model, aparams, label="Prompts")
if ab is not None:
    for status in ab.summary["status"]:
        if status != "ok":
            st.warning(f"No absorption score: {status} (try more words).")
    st.dataframe(ab.summary, hide_index=True)
    st.plotly_chart(ab.figures()["absorption"], use_container_width=True)
    st.dataframe(ab.table, hide_index=True)
    full = ab.words[ab.words["full_absorption"]]
    if len(full):
        st.dataframe(full.drop(columns=["prompt"]), hide_index=True)

st.header("Feature geometry")
st.caption("Galaxy: eigenvalues of the covariance of each shipped SAE's unit decoder directions — power-law exponent α "
           "and log volume Σ ln λ over the fit range, by layer. Lobes: spectral clusters of the latents by co-occurrence "
           "(phi) and by decoder angle, their agreement (AMI) against shuffled labels. Crystals: groups of parallel "
           "differences between latents (parallelograms, trapezoids) and their LDA silhouette, against a shuffled cloud "
           "(Li et al. 2024, The Geometry of "
           "Concepts).")
gparams = ui.params_form(SaeGeometryParams, key="sae_geo",
                         fields=("fit_start", "fit_stop", "normalize", "lobes", "n_clusters", "text_set", "n_texts",
                                 "crystals", "crystal_latents", "crystal_cos", "crystal_distractors"),
                         values={"saes": tuple(names)}, columns=4)
geo = ui.stored("sae_geometry", gparams, model)
if geo is None and st.button("Measure the decoder clouds", key="sae_geo_go"):
    geo = ui.run_analysis("sae_geometry", sae_geometry, model, gparams, label="Texts")
if geo is not None:
    for fig in geo.figures().values():
        st.plotly_chart(fig, use_container_width=True)
    st.dataframe(geo.to_frame(), hide_index=True)
