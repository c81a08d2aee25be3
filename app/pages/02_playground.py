"""Playground.

Baseline and intervened generations side by side; every registered intervention control
(``app.widgets``) is toggled live, and each baseline token shows how much the
intervention changes its probability.
"""

import streamlit as st

from mechscope.analyses.playground import PlaygroundParams, compare_generations
from mechscope.app import ui, widgets

DEFAULTS = PlaygroundParams()

st.title("Playground")
model, spec = ui.sidebar_model()

st.sidebar.subheader("Generation")
if "pg_max_new" not in st.session_state:  # a default other pages (and tests) may preset
    st.session_state["pg_max_new"] = DEFAULTS.max_new_tokens
max_new = st.sidebar.slider("Max new tokens", 1, 512, key="pg_max_new",
                            help="long enough to run past a KV policy's S + W")
with ui.guard():
    strategy = widgets.render_strategy(model)

prompt = ui.prompt_box(key="pg_prompt", default=DEFAULTS.prompt)
bos = ui.bos_toggle(spec, key="pg_bos")
controls, outputs = st.columns([1, 2])
with controls:
    st.subheader("Interventions")
    interventions, kv_policy = widgets.render_controls(model)

with outputs:
    base_col, int_col = st.columns(2)
    base_col.subheader("Baseline")
    int_col.subheader("Intervened")
    st.caption("Intervened: " + (", ".join(iv.describe() for iv in interventions) or "no interventions")
               + f"; KV cache: {getattr(kv_policy, 'name', kv_policy)}")
    slots = {"baseline": base_col.empty(), "intervened": int_col.empty()}

with ui.guard():
    params = PlaygroundParams(prompt=prompt, interventions=tuple(interventions), max_new_tokens=max_new,
                              strategy=strategy, kv_policy=kv_policy, prepend_bos=bos, strategy_side=st.session_state.get("pg_strategy_side", "both"))
key = (spec.name, repr(params))
memo = st.session_state.get("pg_memo")
if memo is not None and memo[0] == key:
    result = memo[1]
else:
    streamed = {"baseline": "", "intervened": ""}

    def on_token(which: str, tok: int, text: str) -> None:
        streamed[which] += text
        slots[which].markdown(f"**{ui.md_escape(prompt)}**{ui.md_escape(streamed[which])}▌")

    with ui.guard(), st.spinner("Generating…"):
        result = compare_generations(model, params, on_token=on_token)
    st.session_state["pg_memo"] = (key, result)

slots["baseline"].markdown(f"**{ui.md_escape(prompt)}**{ui.md_escape(result.baseline_text)}")
slots["intervened"].markdown(f"**{ui.md_escape(prompt)}**{ui.md_escape(result.intervened_text)}")

st.subheader("Per-token probability change on the baseline continuation")
d = result.delta_p
ui.show_tokens(result.baseline_tokens, values=d, vmax=1.0,
               caption="Colour: Δp = p(intervened) − p(baseline) of each baseline token, teacher-forced "
                       "(blue: more likely under the intervention, red: less). Hover a token for its value.")
fig_col, table_col = st.columns([3, 2])
fig_col.plotly_chart(result.figures()["delta_p"], key="delta_p_chart")
table = result.to_frame()
table["token"] = [repr(t) for t in table["token"]]
table_col.dataframe(table.drop(columns=["token_id"]), hide_index=True, key="delta_p_table")
