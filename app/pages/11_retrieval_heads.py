"""Retrieval heads.

Wu et al.'s retrieval score over a needle-in-a-haystack grid (layer × head heatmap, hover:
score and counted tests), the NIAH accuracy grid (length × depth), the induction proxy, the
causal masking curves (top-k retrieval heads vs k random heads, seed spread), "send
these heads to the Playground" (masked), the DuoAttention gate map (layer × KV head; hover:
gate, split, retrieval head or not) and the KV-memory vs accuracy curve (RazorAttention vs a
uniform sinks + window cache; or a saved kv-curve result). The forms are generated from the
analyses' Params (``RetrievalParams``, ``MaskingParams``, ``DuoParams``, ``KVCurveParams``); every run
sits behind a button and is kept for the session.
"""

import streamlit as st

from mechscope.analyses.duo_attention import DuoParams, duo_gates, gate_score_spearman
from mechscope.analyses.kv_curve import KVCurveParams, KVCurveResult, kv_curve, kv_ranking
from mechscope.analyses.retrieval import MaskingParams, RetrievalParams, retrieval_heads, retrieval_masking
from mechscope.app import ui, widgets
from mechscope.probes.errors import InputError
from mechscope.probes.interventions import HeadMask
from mechscope.probes.hooknames import head_label

NIAH = ("lengths", "depths", "needles", "prompt_format", "max_new_tokens")  # the grid every section shares


st.title("Retrieval heads")
model, spec = ui.sidebar_model()

# The page starts on a quick grid (one needle, one length, three depths: about a minute on a
# 2-core CPU); the reference grid (RetrievalParams' defaults) is one click away.
QUICK = {"lengths": (500,), "depths": (0.0, 0.5, 1.0), "needles": (0,), "proxy_seqs": 0}

st.header("Detection (needle in a haystack)")
ui.reference_button(RetrievalParams, key="rh", fields=NIAH + ("proxy_seqs",), model=model, label="Reference grid")
rp = ui.params_form(RetrievalParams, key="rh", fields=NIAH + ("threshold", "proxy_seqs"), preset=QUICK,
                    labels={"lengths": "Context lengths (tokens)", "depths": "Depths in [0, 1]",
                            "needles": "Needles (empty: all)", "prompt_format": "Prompt format",
                            "max_new_tokens": "Max new tokens", "threshold": "Retrieval-head threshold",
                            "proxy_seqs": "Induction-proxy sequences (0: skip)"})
if st.button("Detect retrieval heads", key="rh_run", type="primary"):
    ui.run_analysis("retrieval", retrieval_heads, model, rp, label="NIAH tests")
res = ui.stored("retrieval", rp, model)
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
        ui.show_figure(figs["retrieval_scores"], "rh_heat", key="rh_heat")
    with tabs[1]:
        ui.show_figure(figs["niah_grid"], "rh_grid", key="rh_grid")
    with tabs[2]:
        if "proxy" in figs:
            ui.show_figure(figs["proxy"], "rh_proxy_fig", key="rh_proxy_fig")
        else:
            st.caption("The induction proxy was skipped.")
    with tabs[3]:
        st.caption("Agreement of the per-needle score maps (top-10 sets, sets above the threshold, Spearman).")
        ui.show_table(res.stability(), "retrieval_heads_table1", hide_index=True)
    with tabs[4]:
        ui.show_table(res.tests, "retrieval_heads_table2", hide_index=True)

    st.subheader("Send to the Playground")
    k = st.number_input("Top-k heads", 1, 270, max(1, min(5, s["n_above"] or 5)), key="rh_send_k")
    top = res.top(int(k))
    st.caption("Heads: " + ", ".join(head_label(l, h) for l, h in top))
    if st.button("Mask these heads in the Playground", key="rh_send"):
        widgets.send_to_playground(interventions=[HeadMask(l, h) for l, h in top],
                                   note=f"top-{int(k)} retrieval heads masked (uniform attention)")
        st.switch_page("pages/02_playground.py")
    from mechscope.probes.decore import DEFAULT_HEADS, DeCoRe

    n_all = len(res.ranked())
    kd = st.number_input("DeCoRe: top heads masked (the reference's default: 50)", 1, n_all, min(DEFAULT_HEADS, n_all),
                         key="rh_send_decore_k")
    if st.button("Decode with DeCoRe on the top heads in the Playground", key="rh_send_decore"):
        widgets.send_to_playground(strategy=DeCoRe(tuple(res.top(int(kd)))),
                                   note=f"DeCoRe (entropy-guided α) contrasting the top-{int(kd)} retrieval heads "
                                        "(masked while decoding)")
        st.switch_page("pages/02_playground.py")
    if st.button("Keep only these heads' full KV (RazorAttention) in the Playground", key="rh_send_razor"):
        st.session_state["razor_heads_for_playground"] = [tuple(x) for x in top]
        st.session_state.pop("pg_rz_heads", None)
        st.session_state[widgets.PRESET_KV_POLICY] = "razor"
        st.switch_page("pages/02_playground.py")

    st.header("Causal check: masking curves")
    mp = ui.params_form(MaskingParams, key="rh_mask", fields=("ks", "seeds", "mask_scope"), columns=3,
                        values={**{f: getattr(rp, f) for f in NIAH}, "threshold": rp.threshold,
                                "heads": tuple(res.top(n_all))},
                        labels={"ks": "k values", "seeds": "Random draws per k", "mask_scope": "Mask heads during"})
    st.caption(f"Random heads are drawn from the heads outside the top {mp.random_outside_top} of the ranking "
               "(outside the top max(k) when too few remain).")
    if st.button("Run masking curves", key="rh_mask_run"):
        ui.run_analysis("retrieval_masking", retrieval_masking, model, mp, label="masking configurations")
    mres = ui.stored("retrieval_masking", mp, model)
    if mres is not None:
        ui.show_figure(mres.figures()["masking_curves"], "rh_mask_fig", key="rh_mask_fig")
        st.caption(f"Random heads {mres.random_pool}.")
        ui.show_table(mres.summary().round(3), "retrieval_heads_table3", hide_index=True)

# ---------------------------------------------------------------------------------------
# DuoAttention gates

st.header("DuoAttention gates")
st.caption("Xiao et al. 2024: one gate α per KV head mixes full attention with sinks + recent-window attention; "
           "only the gates are trained (synthetic passkey retrieval, MSE of final hidden states + λ·mean|α|). "
           "α ≥ 0.5: retrieval head. Circles mark KV heads holding a retrieval head from the detection above.")
dp = ui.params_form(
    DuoParams, key="duo", columns=5,
    fields=("steps", "min_length", "max_length", "n_sink", "window", "n_passkeys", "passkey_words", "lr", "reg_weight",
            "full_branch"),
    values={"retrieval_heads": tuple(res.retrieval_heads()) if res is not None else ()},
    labels={"steps": "Steps", "min_length": "Min context", "max_length": "Max context", "n_sink": "Sinks",
            "window": "Window", "n_passkeys": "Passkeys per sample", "passkey_words": "Words per passkey",
            "lr": "Learning rate", "reg_weight": "λ (mean|α|)", "full_branch": "Full branch"})
if st.button("Train gates", key="duo_run"):
    ui.run_analysis("duo", duo_gates, model, dp, label="training steps")
dres = ui.stored("duo", dp, model)
if dres is None:
    st.info("Press **Train gates** (a CPU trains a few dozen steps on 500–1,000-token samples in minutes).")
else:
    s = dres.summary()
    g1, g2, g3, g4 = st.columns(4)
    g1.metric("KV heads with α ≥ 0.5", f"{s['retrieval']} / {s['kv_heads']}")
    g2.metric("Mean α", f"{s['mean_gate']:.3f}")
    if res is not None:
        o = dres.overlap()
        g3.metric("Jaccard with retrieval score", f"{o['jaccard']:.2f}", help=f"{o['both']} shared of {o['n_duo']} gate "
                  f"heads and {o['n_retrieval']} score KV heads")
        g4.metric("Spearman vs grouped max score", f"{gate_score_spearman(dres.gates, res.head_scores, dres.group):.2f}")
    if not dres.complete:
        st.warning("Interrupted: these are the gates reached so far.")
    figs = dres.figures()
    ui.show_figure(figs["gate_map"], "duo_map", key="duo_map")
    ui.show_figure(figs["training"], "duo_training", key="duo_training")

# ---------------------------------------------------------------------------------------
# KV memory vs accuracy

st.header("KV memory vs accuracy")
st.caption("RazorAttention (top-m KV heads keep their whole cache, the others sinks + window + a compensation token) "
           "against a head-agnostic sinks + window cache of the same size, on the NIAH grid above.")
sources = (["retrieval score (detection above)"] if res is not None else []) + (["DuoAttention gates"] if dres is not None else [])
saved_dir = st.text_input("Or show a saved kv-curve result (folder)", "", key="kv_saved")
kres = None
if saved_dir:
    with ui.guard():
        from mechscope.analyses.catalog import load_result

        loaded = load_result(saved_dir)
        if not isinstance(loaded, KVCurveResult):
            raise InputError(f"{saved_dir} holds a {loaded.kind} result, not kv-curve.")
        kres = loaded
elif not sources:
    st.info("Detect retrieval heads or train DuoAttention gates first: they rank the KV heads.")
else:
    source = st.selectbox("Rank KV heads by", sources, key="kv_source")
    ranking = kv_ranking(res.head_scores, model) if source.startswith("retrieval") else kv_ranking(dres.gates)
    kp = ui.params_form(KVCurveParams, key="kv", fields=("kv_heads", "n_sink", "window", "compensation"),
                        values={**{f: getattr(rp, f) for f in NIAH}, "heads": tuple((l, k) for l, k, _ in ranking)},
                        labels={"kv_heads": "m (full-KV heads)", "n_sink": "Sinks", "window": "Window",
                                "compensation": "Compensation token"})
    if st.button("Run the KV-memory curve", key="kv_run"):
        ui.run_analysis("kv_curve", kv_curve, model, kp, label="NIAH answers")
    kres = ui.stored("kv_curve", kp, model)
if kres is not None:
    if not kres.complete:
        st.warning("Interrupted: the points finished so far.")
    ui.show_figure(kres.figures()["kv_curve"], "kv_fig", key="kv_fig")
    ui.show_table(kres.curve.round(3), "retrieval_heads_table4", hide_index=True)
