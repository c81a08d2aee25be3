"""Runs.

Every background run in the runs folder (analyses estimated over a few seconds run in the
background; see ``ui.run_analysis``), newest first: status, progress, a link that opens the
run in its page, and Cancel for runs of this server. Refreshes while one runs.
"""

import datetime

import streamlit as st

from mechscope.app import ui

TITLE = "Runs"

st.title("Runs")
ui.sidebar_model()
st.caption(f"Folder: `{ui.runs_dir()}` (under `$MECHSCOPE_RESULTS` if set, else the user's cache).")


def _body() -> None:
    runs = ui.recent_background_runs(200)
    if not runs:
        st.info("No background runs yet: a page's long analysis (its form shows the estimate) runs here.")
        return
    for r in runs:
        when = datetime.datetime.fromtimestamp(r["submitted"] or 0).strftime("%Y-%m-%d %H:%M:%S")
        left, right = st.columns([5, 1])
        ui.run_entry(r, f"{r['kind']} · {r['run']} · {r['model']} · {when} · {r['status']}"
                        + (f" — {r['error']}" if r.get("error") else ""), where=left, key="runs_page")
        h = ui.live_handle(r["run"])
        if h is not None and h.status == "running":
            left.progress(h.progress, text=h.message)
            if not h.cancelled and right.button("Cancel", key=f"runs_cancel_{r['run']}"):
                h.cancel()


page = st.session_state.pop(ui.OPEN_REQUEST, None)
if page:
    st.switch_page(page)
st.fragment(run_every=2.0 if ui.any_running() else None)(_body)()
