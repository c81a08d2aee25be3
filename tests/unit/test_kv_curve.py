"""KV-memory curve pieces: the KV-head ranking (GQA grouped max), NIAH parameters carrying a
KV policy through save/load, the CLI's --kv-policy flags, and their bad-input messages."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from analyses.kv_curve import KVCurveParams, kv_ranking
from analyses.niah import NiahParams
from app.commands.kv import kv_policy_from_args, parse_kv_heads
from probes.errors import InputError
from probes.kv_policies import SinkWindow
from probes.razor import RazorAttention
from probes.results import Params


def _args(**kw):
    base = dict(kv_policy="full", kv_sink=None, kv_window=None, kv_heads="", kv_heads_from=None, kv_top=None,
                no_kv_compensation=False)
    base.update(kw)
    return Namespace(**base)


def test_kv_ranking_groups_query_heads_by_max(tiny_gqa):
    # tiny_gqa: 2 layers × 4 query heads, 2 KV heads (query heads 0,1 → KV 0; 2,3 → KV 1)
    scores = np.array([[0.1, 0.0, 0.0, 0.3],
                       [0.0, 0.5, 0.2, 0.2]])
    assert kv_ranking(scores, tiny_gqa) == [(1, 0, 0.5), (0, 1, 0.3), (1, 1, 0.2), (0, 0, 0.1)]
    gates = np.array([[0.2, 0.9], [0.9, 0.1]])  # already per KV head; ties by layer
    assert [(l, k) for l, k, _ in kv_ranking(gates)] == [(0, 1), (1, 0), (0, 0), (1, 1)]


def test_niah_params_keep_the_kv_policy_through_save_data():
    p = NiahParams(lengths=(100,), kv_policy=RazorAttention(((3, 1), (2, 0)), n_sink=2, window=8))
    back = Params.from_dict(p.to_dict())
    assert back == p and isinstance(back.kv_policy, RazorAttention) and back.kv_policy.heads == ((2, 0), (3, 1))
    assert NiahParams(kv_policy="sink_window").kv_policy == SinkWindow()
    assert NiahParams().kv_policy == "full"
    with pytest.raises(InputError, match="Unknown KV-cache policy"):
        NiahParams(kv_policy="bogus")


def test_cli_kv_flags_build_the_policy(tiny_gqa):
    assert kv_policy_from_args(_args(), tiny_gqa) == "full"
    assert kv_policy_from_args(_args(kv_policy="sink_window", kv_sink=2, kv_window=10), tiny_gqa) == SinkWindow(2, 10)
    got = kv_policy_from_args(_args(kv_policy="razor", kv_heads="L1K0,L0K1", kv_window=5, no_kv_compensation=True), tiny_gqa)
    assert got == RazorAttention(((0, 1), (1, 0)), window=5, compensation=False, head_kind="kv")
    assert parse_kv_heads("L17K1 l3k0") == [(17, 1), (3, 0)]


@pytest.mark.parametrize("kw, msg", [
    (dict(kv_policy="full", kv_window=4), "do not apply"),
    (dict(kv_policy="window", kv_sink=4), "does not apply"),
    (dict(kv_policy="sink_window", kv_heads="L0K0"), "razor only"),
    (dict(kv_policy="razor", kv_heads="L0H1"), "expected a KV head"),
    (dict(kv_policy="razor", kv_heads="L5K0"), "outside the model"),
    (dict(kv_policy="razor", kv_heads="L0K0", kv_heads_from=Path("x")), "not both"),
])
def test_cli_kv_flags_bad_input(tiny_gqa, kw, msg):
    with pytest.raises(InputError, match=msg):
        kv_policy_from_args(_args(**kw), tiny_gqa)


def test_kv_curve_params_refuse_bad_values():
    for bad in (dict(kv_heads=()), dict(kv_heads=(-1,)), dict(window=-1)):
        with pytest.raises(InputError):
            KVCurveParams(**bad)
