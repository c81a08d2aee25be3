"""mechscope dashboard entry point: ``streamlit run app/Home.py``.

It only routes. Pages are discovered from ``app/pages/NN_name.py`` (see ``app.ui``); the
first one (the next-token view) is the landing page, so the embedded model answers as soon
as it has loaded.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # `streamlit run app/Home.py` puts app/ on the path, not the repo root
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from app import ui  # noqa: E402

st.set_page_config(page_title="mechscope", layout="wide")
ui.navigation().run()
