"""analyses.catalog's cost model: per-analysis (tokens, passes) formulas counted by hand,
and the estimate = passes × per-call + tokens × per-token from a cached calibration."""

import pytest

from mechscope.analyses import catalog


def test_retrieval_grid_cost_counted_by_hand():
    from mechscope.analyses.retrieval import RetrievalParams

    p = RetrievalParams(lengths=(100, 200), depths=(0.0, 1.0), needles=(0,), max_new_tokens=5, batch_size=3,
                        proxy_seqs=0)
    # 4 tests: prompts 100+100+200+200 tokens, 5 decoded tokens each; 4 prefills + ceil(4/3) × 5 decode calls
    assert catalog.cost_of(p) == (600 + 4 * 5, 4 + 2 * 5)


def test_masking_cost_counts_every_configuration():
    from mechscope.analyses.retrieval import MaskingParams

    p = MaskingParams(lengths=(100,), depths=(0.5,), needles=(0,), max_new_tokens=2, batch_size=1, ks=(0, 3),
                      seeds=2, heads=((0, 0), (0, 1), (1, 0)))
    # configurations: k=0 once; k=3 top-3 + 2 random draws; each runs 1 test of 100 + 2 tokens, 1 + 2 calls
    assert catalog.cost_of(p) == (4 * 102, 4 * 3)


def test_isotropy_cost_and_unknown_kind():
    from mechscope.analyses.isotropy import IsotropyParams
    from mechscope.analyses.next_token import NextTokenParams

    assert catalog.cost_of(IsotropyParams(n_texts=10, max_tokens=16, batch_size=4, heads=False)) == (160, 3)
    assert catalog.cost_of(IsotropyParams(n_texts=10, max_tokens=16, batch_size=4, heads=True)) == (160, 6)
    assert catalog.cost_of(NextTokenParams()) is None


def test_estimate_uses_one_cached_calibration(tiny, monkeypatch):
    from mechscope.analyses.isotropy import IsotropyParams

    calls = []
    real = tiny.forward

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(tiny, "forward", counting)
    monkeypatch.setattr(catalog, "_CALIBRATION", {})
    per_call, per_token = catalog.calibrate(tiny)
    assert per_call > 0 and per_token >= 0
    n = len(calls)
    assert n == 8  # four timed forwards of 1 token, four of 64
    catalog.calibrate(tiny)
    assert len(calls) == n  # measured once per process and model
    p = IsotropyParams(n_texts=10, max_tokens=16, batch_size=4, heads=False)
    assert catalog.estimate_seconds(p, tiny) == pytest.approx(3 * per_call + 160 * per_token, rel=1e-12)
