"""Retrieval heads.

Wu et al.'s retrieval score over a needle-in-a-haystack grid (layer × head heatmap, hover:
score and counted tests), the NIAH accuracy grid (length × depth), the induction proxy, the
causal masking curves (top-k retrieval heads vs k random heads, seed spread), "send
these heads to the Playground" (masked), the DuoAttention gate map (layer × KV head; hover:
gate, split, retrieval head or not) and the KV-memory vs accuracy curve (RazorAttention vs a
uniform sinks + window cache; or a saved kv-curve result). Widget defaults are the analyses' own
(``RetrievalParams``, ``MaskingParams``, ``DuoParams``, ``KVCurveParams``); every run sits behind a button and is kept for the
session.
"""

import streamlit as st

from mechscope.analyses.duo_attention import DuoParams, duo_gates, gate_score_spearman
from mechscope.analyses.kv_curve import KVCurveParams, KVCurveResult, kv_curve, kv_ranking
from mechscope.analyses.retrieval import MaskingParams, RetrievalParams, retrieval_heads, retrieval_masking
from mechscope.app import interventions_ui, ui
from mechscope.probes.errors import InputError
from mechscope.probes.interventions import HeadMask

RP, MP, DP, KP = RetrievalParams(), MaskingParams(), DuoParams(), KVCurveParams()


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
    from mechscope.probes.decore import DEFAULT_HEADS, DeCoRe

    n_all = len(res.ranked())
    kd = st.number_input("DeCoRe: top heads masked (the reference's default: 50)", 1, n_all, min(DEFAULT_HEADS, n_all),
                         key="rh_send_decore_k")
    if st.button("Decode with DeCoRe on the top heads in the Playground", key="rh_send_decore"):
        interventions_ui.send_to_playground(strategy=DeCoRe(tuple(res.top(int(kd)))),
                                            note=f"DeCoRe (entropy-guided α) contrasting the top-{int(kd)} retrieval heads "
                                                 "(masked while decoding)")
        st.switch_page("pages/02_playground.py")
    if st.button("Keep only these heads' full KV (RazorAttention) in the Playground", key="rh_send_razor"):
        st.session_state["razor_heads_for_playground"] = [tuple(x) for x in top]
        st.session_state.pop("pg_rz_heads", None)
        st.session_state[interventions_ui.PRESET_KV_POLICY] = "razor"
        st.switch_page("pages/02_playground.py")

    st.header("Causal check: masking curves")
    d1, d2, d3 = st.columns(3)
    ks = d1.text_input("k values", ", ".join(map(str, MP.ks)), key="rh_ks")
    seeds = d2.number_input("Random draws per k", 1, 20, MP.seeds, key="rh_seeds")
    scope = d3.selectbox("Mask heads during", ["decode", "prompt_and_decode"], key="rh_mask_scope",
                         help="decode: the prompt is prefilled unmasked, heads masked from its last token on (the "
                              "reference); prompt_and_decode: masked on the prompt too")
    st.caption(f"Random heads are drawn from the heads outside the top {MP.random_outside_top} of the ranking "
               "(outside the top max(k) when too few remain).")
    mp = None
    with ui.guard():
        kk = _ints(ks)
        mp = MaskingParams(lengths=rp.lengths, depths=rp.depths, needles=rp.needles, prompt_format=rp.prompt_format,
                           max_new_tokens=rp.max_new_tokens, ks=kk, seeds=int(seeds),
                           heads=tuple(res.top(n_all)), threshold=rp.threshold, mask_scope=scope)
    if mp is not None and st.button("Run masking curves", key="rh_mask_run"):
        ui.run_analysis("retrieval_masking", retrieval_masking, model, mp, label="masking configurations")
    mres = ui.stored("retrieval_masking", mp, model) if mp is not None else None
    if mres is not None:
        st.plotly_chart(mres.figures()["masking_curves"], key="rh_mask_fig")
        st.caption(f"Random heads {mres.random_pool}.")
        st.dataframe(mres.summary().round(3), hide_index=True)

# ---------------------------------------------------------------------------------------
# DuoAttention gates (issue 8 item 5)

st.header("DuoAttention gates")
st.caption("Xiao et al. 2024: one gate α per KV head mixes full attention with sinks + recent-window attention; "
           "only the gates are trained (synthetic passkey retrieval, MSE of final hidden states + λ·mean|α|). "
           "α ≥ 0.5: retrieval head. Circles mark KV heads holding a retrieval head from the detection above.")
e1, e2, e3, e4, e5 = st.columns(5)
d_steps = e1.number_input("Steps", 1, 5000, DP.steps, key="duo_steps")
d_min = e2.number_input("Min context", 16, 8192, DP.min_length, key="duo_min")
d_max = e3.number_input("Max context", 16, 8192, DP.max_length, key="duo_max")
d_sink = e4.number_input("Sinks", 0, 1024, DP.n_sink, key="duo_sink")
d_window = e5.number_input("Window", 1, 4096, DP.window, key="duo_window")
f1, f2, f3, f4, f5 = st.columns(5)
d_keys = f1.number_input("Passkeys per sample", 1, 10, DP.n_passkeys, key="duo_keys")
d_words = f2.number_input("Words per passkey", 1, 64, DP.passkey_words, key="duo_words")
d_lr = f3.number_input("Learning rate", 0.0001, 1.0, DP.lr, format="%.4f", key="duo_lr")
d_reg = f4.number_input("λ (mean|α|)", 0.0, 1.0, DP.reg_weight, key="duo_reg")
d_branch = f5.selectbox("Full branch", ["reference", "shared"], key="duo_branch",
                        help="reference: the unmodified model's attention output (the reference's training); "
                             "shared: the same q/k/v")
dp = None
with ui.guard():
    dp = DuoParams(steps=int(d_steps), min_length=int(d_min), max_length=int(d_max), n_sink=int(d_sink),
                   window=int(d_window), n_passkeys=int(d_keys), passkey_words=int(d_words), lr=float(d_lr),
                   reg_weight=float(d_reg), full_branch=d_branch,
                   retrieval_heads=tuple(res.retrieval_heads()) if res is not None else ())
if dp is not None and st.button("Train gates", key="duo_run"):
    ui.run_analysis("duo", duo_gates, model, dp, label="training steps")
dres = ui.stored("duo", dp, model) if dp is not None else None
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
    st.plotly_chart(figs["gate_map"], key="duo_map")
    st.plotly_chart(figs["training"], key="duo_training")

# ---------------------------------------------------------------------------------------
# KV memory vs accuracy (issue 8 item 6)

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
elif not sources or rp is None:
    st.info("Detect retrieval heads or train DuoAttention gates first: they rank the KV heads.")
else:
    h1, h2, h3, h4, h5 = st.columns(5)
    source = h1.selectbox("Rank KV heads by", sources, key="kv_source")
    ms = h2.text_input("m (full-KV heads)", ", ".join(map(str, KP.kv_heads)), key="kv_ms")
    k_sink = h3.number_input("Sinks", 0, 1024, KP.n_sink, key="kv_sink")
    k_window = h4.number_input("Window", 0, 8192, KP.window, key="kv_window")
    k_comp = h5.checkbox("Compensation token", KP.compensation, key="kv_comp")
    ranking = kv_ranking(res.head_scores, model) if source.startswith("retrieval") else kv_ranking(dres.gates)
    kp = None
    with ui.guard():
        kp = KVCurveParams(lengths=rp.lengths, depths=rp.depths, needles=rp.needles, prompt_format=rp.prompt_format,
                           max_new_tokens=rp.max_new_tokens, kv_heads=_ints(ms), n_sink=int(k_sink),
                           window=int(k_window), compensation=bool(k_comp), heads=tuple((l, k) for l, k, _ in ranking))
    if kp is not None and st.button("Run the KV-memory curve", key="kv_run"):
        ui.run_analysis("kv_curve", kv_curve, model, kp, label="NIAH answers")
    kres = ui.stored("kv_curve", kp, model) if kp is not None else None
if kres is not None:
    if not kres.complete:
        st.warning("Interrupted: the points finished so far.")
    st.plotly_chart(kres.figures()["kv_curve"], key="kv_fig")
    st.dataframe(kres.curve.round(3), hide_index=True)
