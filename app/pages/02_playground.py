"""Playground.

Baseline and intervened generations side by side; every registered intervention control
(``app.widgets``) is set in the left column and runs when **Generate** is pressed (edits do
not regenerate); each baseline token shows how much the intervention changes its
probability. The interventions and strategy in use are kept in the page's link.
"""

import streamlit as st

from mechscope.analyses.playground import PlaygroundParams, compare_generations
from mechscope.app import ui, widgets
from mechscope.app.widgets.handoff import (
    PRESET_CLAMP,
    PRESET_HEAD_MASK,
    PRESET_KV_POLICY,
    PRESET_STRATEGY,
    PRESET_WHITENING,
    SENT,
    WHITENING_KEYS,
    WHITENING_ON,
    apply_preset,
)
from mechscope.probes.errors import MechscopeError

DEFAULTS = PlaygroundParams()

st.title("Playground")
model, spec = ui.sidebar_model()

# A link's interventions/strategy arrive as a hand-off (once per session); a hand-off or a
# first visit generates at once, later edits wait for Generate.
if not st.session_state.get("_pg_link_taken"):
    st.session_state["_pg_link_taken"] = True
    linked_ivs, linked_strategy = ui.url_value("interventions"), ui.url_value("strategy")
    if (linked_ivs or linked_strategy) and SENT not in st.session_state:
        st.session_state[SENT] = {"interventions": list(linked_ivs or []), "strategy": linked_strategy,
                                  "note": "from the link"}
incoming = (any(k in st.session_state for k in (PRESET_CLAMP, PRESET_HEAD_MASK, PRESET_KV_POLICY, PRESET_STRATEGY,
                                                 PRESET_WHITENING))
            or (st.session_state.get(SENT) is not None and st.session_state.get(SENT) is not st.session_state.get("_pg_seen_sent")))
st.session_state["_pg_seen_sent"] = st.session_state.get(SENT)

apply_preset(PRESET_WHITENING, WHITENING_KEYS, WHITENING_ON)  # before the whitening control is drawn

st.sidebar.subheader("Generation")
if "pg_max_new" not in st.session_state:  # a default other pages (and tests) may preset
    st.session_state["pg_max_new"] = DEFAULTS.max_new_tokens
max_new = st.sidebar.slider("Max new tokens", 1, 512, key="pg_max_new",
                            help="long enough to run past a KV policy's S + W")
strategy = None
try:
    strategy = widgets.render_strategy(model)
except MechscopeError as exc:
    st.sidebar.error(str(exc))

prompt = ui.prompt_box(key="pg_prompt", default=DEFAULTS.prompt)
bos_col, go_col = st.columns([3, 1])
with bos_col:
    bos = ui.bos_toggle(spec, key="pg_bos")
go = go_col.button("Generate", key="pg_generate", type="primary", use_container_width=True,
                   help="edits take effect when pressed")
controls, outputs = st.columns([1, 2])
with controls:
    st.subheader("Interventions")
    interventions, kv_policy = widgets.render_controls(model)
    params, params_error = None, None
    try:
        params = PlaygroundParams(prompt=prompt, interventions=tuple(interventions), max_new_tokens=max_new,
                                  strategy=strategy if strategy is not None else DEFAULTS.strategy,
                                  kv_policy=kv_policy, prepend_bos=bos,
                                  strategy_side=st.session_state.get("pg_strategy_side", "both"))
    except MechscopeError as exc:
        params_error = str(exc)
        st.error(params_error)
ui.set_url("interventions", [iv.to_dict() for iv in interventions if hasattr(iv, "to_dict")])
ui.set_url("strategy", strategy.to_dict() if hasattr(strategy, "to_dict") else None)

with outputs:
    base_col, int_col = st.columns(2)
    base_col.subheader("Baseline")
    int_col.subheader("Intervened")
    st.caption("Intervened: " + (", ".join(iv.describe() for iv in interventions) or "no interventions")
               + f"; KV cache: {getattr(kv_policy, 'name', kv_policy)}")
    slots = {"baseline": base_col.empty(), "intervened": int_col.empty()}
    status = st.empty()

key = (spec.name, repr(params))
memo = st.session_state.get("pg_memo")
run = params is not None and (go or incoming or memo is None)
result = None
if run and not (memo is not None and memo[0] == key):
    streamed = {"baseline": "", "intervened": ""}

    def on_token(which: str, tok: int, text: str) -> None:
        streamed[which] += text
        slots[which].markdown(f"**{ui.md_escape(prompt)}**{ui.md_escape(streamed[which])}▌")

    try:
        with outputs, ui.model_turn(model, "Playground generation"), st.spinner("Generating…"):
            result = compare_generations(model, params, on_token=on_token)
        st.session_state["pg_memo"] = (key, result)
    except MechscopeError as exc:
        with controls:
            st.error(str(exc))  # next to the controls that caused it; the last result stays below
        memo = st.session_state.get("pg_memo")
if result is None and memo is not None:
    result = memo[1]
    if memo[0] != key:
        status.warning("Settings changed: press **Generate** to run them. Showing the last generation.")

if result is None:
    st.stop()

shown_prompt = ui.md_escape(result.params.prompt if result.params is not None else prompt)
slots["baseline"].markdown(f"**{shown_prompt}**{ui.md_escape(result.baseline_text)}")
slots["intervened"].markdown(f"**{shown_prompt}**{ui.md_escape(result.intervened_text)}")
for which, text, toks, col in (("baseline", result.baseline_text, result.baseline_tokens, base_col),
                               ("intervened", result.intervened_text, result.intervened_tokens, int_col)):
    if not text.strip():
        col.info(f"No visible text: the {which} run emitted {len(toks)} token(s) {list(toks)[:8]!r} — e.g. the "
                 "end-of-text token at once, which stops generation (an intervention that pushes the model off its "
                 "distribution often does this; try a lower strength or value).")
        whitenings = [iv for iv in interventions if type(iv).__name__ == "Whitening"]
        if which == "intervened" and whitenings:
            col.info("A whitening maps the residual stream to equal variance in every direction; at full strength at "
                     "a late depth this flattens the few directions the unembedding reads, so the model's next-token "
                     "distribution collapses (here to whitespace). Lower **Strength** in the whitening control (on "
                     "SmolLM2 at the last depth, 0.5 already gives text) or fit the whitening at an earlier depth.")

st.subheader("Per-token probability change on the baseline continuation")
d = result.delta_p
ui.show_tokens(result.baseline_tokens, values=d, vmax=1.0,
               caption="Colour: Δp = p(intervened) − p(baseline) of each baseline token, teacher-forced "
                       "(blue: more likely under the intervention, red: less). Hover a token for its value.")
fig_col, table_col = st.columns([3, 2])
with fig_col:
    ui.show_figure(result.figures()["delta_p"], "playground_delta_p", key="delta_p_chart")
table = result.to_frame()
table["token"] = [repr(t) for t in table["token"]]
with table_col:
    ui.show_table(table.drop(columns=["token_id"]), "playground_tokens", key="delta_p_table", hide_index=True)
ui.result_box(result, "playground")
