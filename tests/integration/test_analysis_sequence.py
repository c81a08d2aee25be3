"""One loaded model, many analyses in sequence (as in one long-lived dashboard process):
gradient-based analyses (circuits' AtP / EAP-IG, DuoAttention's gate training) after
decoding ones — including a needle test longer than TransformerLens' initial 2,048-row
rotary table, which extends that table on the model — all succeed and give the tables
they give when run first. Parameters are those of ``test_rerun_every_analysis``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.integration.test_rerun_every_analysis import RERUN_IN_SEQUENCE, _cases

pytestmark = pytest.mark.integration


def _assert_same_table(a: pd.DataFrame, b: pd.DataFrame, what: str) -> None:
    assert list(a.columns) == list(b.columns) and len(a) == len(b), what
    for col in a.columns:
        if pd.api.types.is_float_dtype(a[col]):
            np.testing.assert_allclose(b[col].to_numpy(float), a[col].to_numpy(float), rtol=1e-5, atol=1e-7,
                                       equal_nan=True, err_msg=f"{what}: {col}")
        else:
            assert a[col].tolist() == b[col].tolist(), f"{what}: {col}"


def test_analyses_in_several_orders_on_one_model(smollm2, tmp_path):
    """A repeated analysis runs again from its saved folder (``Result.rerun``), which is the
    rerun check of ``test_rerun_every_analysis`` for the analyses in ``RERUN_IN_SEQUENCE``."""
    from dataclasses import replace

    from mechscope.analyses.catalog import load_result
    from mechscope.probes.results import ANALYSES

    model = smollm2.model
    cases = _cases()
    cases["niah_long"] = replace(cases["niah"], lengths=(2100,), max_new_tokens=2, interventions=())
    # each order runs a gradient-based analysis right after a decoding one
    # (the mechanism, on tiny models and in several orders, is tests/unit/test_inference_state.py)
    sequence = ["duo_gates", "circuit_compare", "niah_long", "circuit_compare", "duo_gates"]
    assert RERUN_IN_SEQUENCE <= {n for n in sequence if sequence.count(n) > 1}
    first: dict[str, pd.DataFrame] = {}
    for step, name in enumerate(sequence):
        params = cases[name]
        if name in first:
            loaded = load_result(tmp_path / name)
            assert loaded.params == params
            _assert_same_table(first[name], loaded.rerun(model).to_frame(), f"{name} at step {step}")
        else:
            result = ANALYSES[type(params).kind](model, params)
            result.save(tmp_path / name)
            first[name] = result.to_frame()
    assert model.blocks[0].attn.rotary_cos.shape[0] > 2048  # the long needle test did extend the table
    assert not any(b.is_inference() for b in model.buffers())
