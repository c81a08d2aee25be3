"""The Logit lens page renders on the embedded model and shows bad input as one error."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PAGE = str(Path(__file__).resolve().parents[2] / "app" / "pages" / "20_logit_lens.py")


def test_logit_lens_page(smollm2):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(PAGE, default_timeout=300).run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Final top-1 at the last position"] == "' Paris'"
    at.text_input(key="ll_target").set_value(" Pariss").run()
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("' Pariss' is 2 tokens")
