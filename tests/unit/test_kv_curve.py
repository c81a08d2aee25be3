"""KV-memory curve pieces: the KV-head ranking (GQA grouped max), NIAH parameters carrying a
KV policy through save/load, the CLI's --kv-policy flags, and their bad-input messages."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from mechscope.analyses.kv_curve import KVCurveParams, kv_ranking
from mechscope.analyses.niah import NiahParams
from mechscope.app.commands.kv import kv_policy_from_args, parse_kv_heads
from mechscope.probes.errors import InputError
from mechscope.probes.kv_policies import SinkWindow
from mechscope.probes.razor import RazorAttention
from mechscope.probes.results import Params


def _args(**kw):
    base = dict(kv_policy="full", kv_sink=None, kv_window=None, kv_buffer=None, kv_ratio=None, kv_heads="",
                kv_heads_from=None, kv_top=None, no_kv_compensation=False)
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
    assert got.buffer == "ratio" and got.compression_ratio == 5.0  # the paper's buffer by default
    got = kv_policy_from_args(_args(kv_policy="razor", kv_heads="L1K0", kv_window=8, kv_ratio=3.0), tiny_gqa)
    assert (got.buffer, got.window, got.compression_ratio, got.buffer_length(60)) == ("ratio", 8, 3.0, 20)
    got = kv_policy_from_args(_args(kv_policy="razor", kv_window=8, kv_buffer="fixed"), tiny_gqa)
    assert (got.buffer, got.buffer_length(60)) == ("fixed", 8)
    assert parse_kv_heads("L17K1 l3k0") == [(17, 1), (3, 0)]


@pytest.mark.parametrize("kw, msg", [
    (dict(kv_policy="full", kv_window=4), "do not apply"),
    (dict(kv_policy="window", kv_sink=4), "does not apply"),
    (dict(kv_policy="sink_window", kv_ratio=3.0), "--kv-ratio does not apply"),
    (dict(kv_policy="sink_window", kv_buffer="fixed"), "--kv-buffer does not apply"),
    (dict(kv_policy="none", kv_ratio=3.0), "do not apply"),
    (dict(kv_policy="razor", kv_ratio=0.5), "compression_ratio"),
    (dict(kv_policy="sink_window", kv_heads="L0K0"), "razor only"),
    (dict(kv_policy="razor", kv_heads="L0H1"), "expected a KV head"),
    (dict(kv_policy="razor", kv_heads="L5K0"), "outside the model"),
    (dict(kv_policy="razor", kv_heads="L0K0", kv_heads_from=Path("x")), "not both"),
])
def test_cli_kv_flags_bad_input(tiny_gqa, kw, msg):
    with pytest.raises(InputError, match=msg):
        kv_policy_from_args(_args(**kw), tiny_gqa)


def test_kv_curve_params_refuse_bad_values():
    for bad in (dict(kv_heads=()), dict(kv_heads=(-1,)), dict(window=-1), dict(buffer="grow"),
                dict(compression_ratio=0.0)):
        with pytest.raises(InputError):
            KVCurveParams(**bad)


def test_kv_curve_params_describe_the_policy():
    p = KVCurveParams()
    assert (p.buffer, p.window, p.compression_ratio) == ("ratio", 64, 5.0)
    assert p.policy(((1, 0),)) == RazorAttention(((1, 0),), n_sink=4, window=64, compression_ratio=5.0)
    fixed = KVCurveParams(buffer="fixed", window=16, compensation=False).policy(())
    assert fixed == RazorAttention((), n_sink=4, window=16, compensation=False, buffer="fixed")
    assert Params.from_dict(KVCurveParams(buffer="fixed", compression_ratio=2.0).to_dict()).buffer == "fixed"


def test_answers_under_policies_equal_one_answer_per_test_and_policy(tiny_gqa):
    """The batched evaluation (every policy × the tests of one prompt length as rows of one
    batch) gives each test the answer analyses.niah.answer gives it under that policy alone."""
    import torch

    from mechscope.analyses.kv_curve import answers_under_policies
    from mechscope.analyses.niah import Needle, NiahTest, answer
    from mechscope.probes.razor import uniform_window_for

    g = torch.Generator().manual_seed(3)
    nd = Needle("n", "q", "1 2 3")  # key words of the answer: 1, 2, 3 (ids as text, no tokenizer)
    built = []
    for n in (40, 40, 40, 25):  # two prompt lengths: two groups
        p = tuple(torch.randint(0, 50, (n,), generator=g).tolist())
        built.append((NiahTest(0, n, 0.5, 10, 10, 15, n, "plain", p), nd))
    razor = RazorAttention(((1, 0),), n_sink=2, window=6)
    policies = [None, razor, lambda t: uniform_window_for(tiny_gqa, razor, t.prompt_len)]
    answers, fracs = answers_under_policies(tiny_gqa, built, policies, max_new_tokens=6, rows=5)
    for c, pol in enumerate(policies):
        for i, (t, needle) in enumerate(built):
            p = pol(t) if callable(pol) else pol
            want = answer(tiny_gqa, t, needle, 6, kv_policy=p if p is not None else "full")
            assert answers[c][i].new_tokens == want.new_tokens
            assert answers[c][i].recall == want.recall
            assert fracs[c][i] == (1.0 if p is None else p.kv_fraction(tiny_gqa, t.prompt_len))
    assert any(answers[1][i].new_tokens != answers[0][i].new_tokens for i in range(4))  # the policy acts
