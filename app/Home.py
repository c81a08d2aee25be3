"""mechscope dashboard entry point: ``streamlit run app/Home.py``.

It only routes. The landing page is the front page (``app.front``: the families, the shipped
model and SAEs, recent saved results, a tour); the analysis pages are discovered from
``app/pages/NN_name.py`` (see ``app.ui``).
"""

import streamlit as st

from mechscope.app import front, ui

st.set_page_config(page_title="mechscope", layout="wide")
ui.navigation(home=front.render).run()
