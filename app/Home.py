"""mechscope dashboard entry point: ``streamlit run app/Home.py``.

It only routes. Pages are discovered from ``app/pages/NN_name.py`` (see ``app.ui``); the
first one (the next-token view) is the landing page, so the embedded model answers as soon
as it has loaded.
"""

import streamlit as st

from mechscope.app import ui

st.set_page_config(page_title="mechscope", layout="wide")
ui.navigation().run()
