"""Retrieval heads.

Wu et al.'s retrieval score over a needle-in-a-haystack grid (layer × head heatmap, hover:
score and counted tests), the NIAH accuracy grid (length × depth), the induction proxy, the
causal masking curves (top-k retrieval heads vs k random heads, seed spread), and "send
these heads to the Playground" (masked). Widget defaults are the analyses' own
(``RetrievalParams``, ``MaskingParams``); every run sits behind a button and is kept for the
session.
"""

import streamlit as st

from analyses.retrieval import MaskingParams, RetrievalParams, retrieval_heads, retrieval_masking
from app import interventions_ui, ui
from probes.interventions import HeadMask

RP, MP = RetrievalParams(), MaskingParams()


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.replace(" ", "").split(",") if x)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.replace(" ", "").split(",") if x)


st.title("Retrieval heads")
model, spec = ui.sidebar_model()

st.header("Detection (needle in a haystack)")
c1, c2, c3, c4 = st.columns(4)
lengths = c1.text_input("Context lengths (tokens)", ", ".join(map(str, RP.lengths)), key="rh_lengths")
depths = c2.text_input("Depths in [0, 1]", ", ".join(f"{d:g}" for d in RP.depths), key="rh_depths")
needles = c3.text_input("Needles (empty: all)", "", key="rh_needles")
fmt = c4.selectbox("Prompt format", ["auto", "chat", "plain"], key="rh_format",
                   help="auto: the chat template for models that have one (instruct), else plain")
c5, c6, c7 = st.columns(3)
max_new = c5.number_input("Max new tokens", 1, 64, RP.max_new_tokens, key="rh_max_new")
threshold = c6.number_input("Retrieval-head threshold", 0.0, 1.0, RP.threshold, 0.01, key="rh_threshold")
proxy = c7.number_input("Induction-proxy sequences (0: skip)", 0, 64, RP.proxy_seqs, key="rh_proxy")

rp = None
with ui.guard():
    rp = RetrievalParams(lengths=_ints(lengths), depths=_floats(depths), needles=_ints(needles), prompt_format=fmt,
                         max_new_tokens=int(max_new), threshold=float(threshold), proxy_seqs=int(proxy))
if rp is not None and st.button("Detect retrieval heads", key="rh_run", type="primary"):
    ui.run_analysis("retrieval", retrieval_heads, model, rp, label="NIAH tests")
res = ui.stored("retrieval", rp, model) if rp is not None else None
if res is None:
    st.info("Choose a grid and press **Detect retrieval heads** (one greedy answer per test; on a CPU a 2,000-token "
            "test takes several seconds).")
else:
    s = res.summary()
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Counted tests", f"{s['counted']} / {s['tests']}")
    m2.metric(f"Heads > {res.params.threshold:g}", f"{s['n_above']} ({100 * s['fraction_above']:.1f}%)")
    m3.metric("NIAH accuracy", f"{s['accuracy']:.2f}")
    m4.metric("Spearman vs induction", f"{s.get('spearman_induction', float('nan')):.2f}")
    if not res.complete:
        st.warning("Interrupted: the scores use the tests finished so far.")
    figs = res.figures()
    tabs = st.tabs(["Scores", "NIAH grid", "Proxy", "Stability", "Tests"])
    with tabs[0]:
        st.plotly_chart(figs["retrieval_scores"], key="rh_heat")
    with tabs[1]:
        st.plotly_chart(figs["niah_grid"], key="rh_grid")
    with tabs[2]:
        if "proxy" in figs:
            st.plotly_chart(figs["proxy"], key="rh_proxy_fig")
        else:
            st.caption("The induction proxy was skipped.")
    with tabs[3]:
        st.caption("Agreement of the per-needle score maps (top-10 sets, sets above the threshold, Spearman).")
        st.dataframe(res.stability(), hide_index=True)
    with tabs[4]:
        st.dataframe(res.tests, hide_index=True)

    st.subheader("Send to the Playground")
    k = st.number_input("Top-k heads", 1, 270, max(1, min(5, s["n_above"] or 5)), key="rh_send_k")
    top = res.top(int(k))
    st.caption("Heads: " + ", ".join(f"L{l}H{h}" for l, h in top))
    if st.button("Mask these heads in the Playground", key="rh_send"):
        interventions_ui.send_to_playground(interventions=[HeadMask(l, h) for l, h in top],
                                            note=f"top-{int(k)} retrieval heads masked (uniform attention)")
        st.switch_page("pages/02_playground.py")
    if st.button("Decode with DeCoRe on these heads in the Playground", key="rh_send_decore"):
        from probes.decore import DeCoRe

        interventions_ui.send_to_playground(strategy=DeCoRe(tuple(top)),
                                            note=f"DeCoRe (entropy-guided α) contrasting the top-{int(k)} retrieval heads")
        st.switch_page("pages/02_playground.py")
    if st.button("Keep only these heads' full KV (RazorAttention) in the Playground", key="rh_send_razor"):
        st.session_state["razor_heads_for_playground"] = [tuple(x) for x in top]
        st.session_state.pop("pg_rz_heads", None)
        st.session_state[interventions_ui.PRESET_KV_POLICY] = "razor"
        st.switch_page("pages/02_playground.py")

    st.header("Causal check: masking curves")
    d1, d2 = st.columns(2)
    ks = d1.text_input("k values", ", ".join(map(str, MP.ks)), key="rh_ks")
    seeds = d2.number_input("Random draws per k", 1, 20, MP.seeds, key="rh_seeds")
    st.caption("Random heads are drawn from the heads outside the top max(k).")
    mp = None
    with ui.guard():
        kk = _ints(ks)
        mp = MaskingParams(lengths=rp.lengths, depths=rp.depths, needles=rp.needles, prompt_format=rp.prompt_format,
                           max_new_tokens=rp.max_new_tokens, ks=kk, seeds=int(seeds),
                           heads=tuple(res.top(max(kk, default=0))), threshold=rp.threshold)
    if mp is not None and st.button("Run masking curves", key="rh_mask_run"):
        ui.run_analysis("retrieval_masking", retrieval_masking, model, mp, label="masking configurations")
    mres = ui.stored("retrieval_masking", mp, model) if mp is not None else None
    if mres is not None:
        st.plotly_chart(mres.figures()["masking_curves"], key="rh_mask_fig")
        st.dataframe(mres.summary().round(3), hide_index=True)
