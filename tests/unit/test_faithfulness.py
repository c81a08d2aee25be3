"""The contextual-faithfulness set and its scoring (analyses/faithfulness.py)."""

import numpy as np
import pytest

from mechscope.analyses.faithfulness import is_faithful, load_items
from mechscope.probes.errors import InputError
from mechscope.probes.stats import bootstrap_ci

ITEM = {"context": "In this story, the capital of France is Lyon.", "question": "What is the capital of France?",
        "answer": "Lyon", "prior": "Paris"}


def test_shipped_set_is_counterfactual():
    items = load_items()
    assert len(items) >= 40
    for it in items:
        assert it["answer"].lower() in it["context"].lower()  # the context states the answer
        assert it["answer"].lower() != it["prior"].lower()
        assert it["prior"].lower() not in it["context"].lower()  # and never mentions the prior answer


@pytest.mark.parametrize("response, ok", [
    ("Lyon.", True), ("The capital of France is Lyon", True), ("lyon", True),
    ("Paris", False), ("Lyon, not Paris", False), ("Lyonnais", False), ("", False), ("\nLyon", True),
    ("Paris\nLyon", False),
])
def test_is_faithful(response, ok):
    assert is_faithful(response, ITEM) is ok


def test_bootstrap_ci_by_hand():
    assert bootstrap_ci([1, 1, 1, 1]) == (1.0, 1.0, 1.0)  # every resample has mean 1
    mean, lo, hi = bootstrap_ci([0, 1] * 50, n_boot=20_000, seed=1)
    # mean of 100 Bernoulli(1/2) resamples: sd = 0.05, 95% interval ≈ 0.5 ± 1.96 · 0.05
    assert mean == 0.5
    assert lo == pytest.approx(0.402, abs=0.012) and hi == pytest.approx(0.598, abs=0.012)
    with pytest.raises(InputError):
        bootstrap_ci([])
    assert np.isfinite(bootstrap_ci([0.0])[1])
