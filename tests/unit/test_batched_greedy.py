"""Batched greedy decoding (left padding, finished rows leave) equals per-prompt decoding."""

import numpy as np
import pytest
import torch

from mechscope.analyses.niah import Needle, NiahTest
from mechscope.analyses.retrieval import RetrievalParams, Top1, scan, score_test
from mechscope.probes.batched_greedy import greedy_rows, length_batches
from mechscope.probes.decoding import generate
from mechscope.probes.errors import InputError
from mechscope.probes.interventions import HeadMask
from tests.tiny import copy_model


def _per_prompt(model, prompt, n, stops, interventions=()):
    top = Top1(model.cfg.n_layers, model.cfg.n_heads)
    gen = generate(model, prompt, max_new_tokens=n, reducers=top.reducers(model), stop_tokens=stops,
                   interventions=interventions)
    return gen.new_tokens, top.stacked(len(gen.new_tokens))


@pytest.mark.parametrize("prefill_rows", [1, 2])
def test_rows_of_different_lengths_equal_separate_runs(tiny64, prefill_rows):
    """float64 tiny rotary model: tokens and integer top-1 positions (unpadded) of every row
    equal a separate generate() with the Top1 reducer; a stop token ends some rows early."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 50, (n,), generator=g).tolist() for n in (20, 13, 7, 13, 2)]
    stops = (generate(tiny64, prompts[1], max_new_tokens=3).new_tokens[2],)  # row 1 stops at step 3 at the latest
    outs = greedy_rows(tiny64, prompts, 7, stop_tokens=stops, top1=True, prefill_rows=prefill_rows)
    lens = set()
    for p, o in zip(prompts, outs):
        tokens, top = _per_prompt(tiny64, p, 7, stops)
        assert o.new_tokens == tokens
        assert torch.equal(o.top1, top)  # integer key positions, unpadded
        assert int(o.top1.min()) >= 0 and int(o.top1.max()) < len(p) + len(tokens) - 1  # the row's own keys
        lens.add(len(tokens))
    assert len(lens) > 1  # some rows stopped before others


def test_head_mask_rows_equal_separate_runs(tiny64):
    """Uniform head masking keeps pad keys at −inf, so masked rows also match."""
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 50, (n,), generator=g).tolist() for n in (11, 4, 16)]
    ivs = [HeadMask(0, 1), HeadMask(1, 2)]
    outs = greedy_rows(tiny64, prompts, 5, interventions=ivs, top1=True)
    for p, o in zip(prompts, outs):
        tokens, top = _per_prompt(tiny64, p, 5, (), ivs)
        assert o.new_tokens == tokens and torch.equal(o.top1, top)


def _copy_test(prompt, start):
    return NiahTest(0, len(prompt), 0.5, start, start, start + 5, len(prompt), "plain", tuple(prompt), start, start + 5)


def test_batched_scan_on_the_copy_model_scores_the_copy_head_one():
    """Copy model (absolute positions, offset 10): the last query of a P-token prompt copies
    prompt[P − 11 + t] at step t — only right if left padding keeps unpadded positions. The
    copy head scores exactly 1, the other 0, and the scores equal the per-test loop."""
    m = copy_model()
    g = torch.Generator().manual_seed(2)
    built = []
    for n in (15, 12, 16, 12):
        p = torch.randint(0, 20, (n,), generator=g).tolist()
        start = n - 11
        built.append((_copy_test(p, start), Needle("", "", " ".join(map(str, p[start:start + 5])))))
    got = {i: (a, s) for i, a, s in scan(m, built, max_new_tokens=5, batch_size=3, prefill_rows=2)}
    assert sorted(got) == [0, 1, 2, 3]
    for i, (t, nd) in enumerate(built):
        ans, sc = got[i]
        assert ans.new_tokens == t.prompt_ids[t.needle_start:t.needle_end]
        np.testing.assert_array_equal(sc, np.array([[1.0, 0.0]]))  # 5 hits / 5 answer tokens
        ref_ans, ref = score_test(m, t, nd, max_new_tokens=5)
        assert ref_ans == ans
        np.testing.assert_array_equal(sc, ref)


def test_length_batches_sort_and_bad_input(tiny):
    assert length_batches([5, 9, 7, 9, 1], 2) == [[1, 3], [2, 0], [4]]
    with pytest.raises(InputError, match="at least 1"):
        length_batches([3], 0)
    with pytest.raises(InputError, match="batch_size"):
        RetrievalParams(batch_size=0)
    with pytest.raises(InputError, match="exceeds n_ctx"):
        greedy_rows(tiny, [[1] * 60], 10)
    with pytest.raises(InputError, match="equal length"):
        greedy_rows(tiny, [[1, 2], [1]], 2, require_equal_lengths=True)


def test_row_hooks_one_kv_policy_per_row_equal_separate_runs(tiny64):
    """Rows of equal length, each under its own RazorAttention policy (or none), decoded
    together equal generate(kv_policy=that policy) one by one."""
    from mechscope.probes.razor import RazorAttention

    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 50, (24,), generator=g).tolist() for _ in range(2)]
    policies = [None, RazorAttention(((0, 1),), n_sink=2, window=3),
                RazorAttention((), n_sink=1, window=4, compensation=False)]
    hooks = {p: (p.hooks(tiny64) if p is not None else []) for p in policies}
    rows = [(p, pol) for pol in policies for p in prompts]
    outs = greedy_rows(tiny64, [p for p, _ in rows], 6, row_hooks=[hooks[pol] for _, pol in rows],
                       require_equal_lengths=True, prefill_rows=2)
    seen = set()
    for (p, pol), o in zip(rows, outs):
        ref = generate(tiny64, p, max_new_tokens=6, kv_policy=pol if pol is not None else "full")
        assert o.new_tokens == ref.new_tokens
        seen.add((tuple(p), o.new_tokens))
    assert len(seen) > len(prompts)  # the policies change some answers


def test_row_hooks_with_padding_head_masks_per_row_equal_separate_runs(tiny64):
    """Rows of different lengths, each with its own set of uniformly masked heads (padding-
    safe hooks), equal generate() with those masks as interventions."""
    from mechscope.probes.interventions import hooks_for

    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 50, (n,), generator=g).tolist() for n in (9, 17, 5, 12, 7)]
    # row 3 masks three heads of layer 1: every one of them must apply, not only the last
    masks = [[], [HeadMask(0, 0), HeadMask(1, 3)], [HeadMask(1, 1)], [HeadMask(1, 0), HeadMask(1, 1), HeadMask(1, 3)],
             [HeadMask(0, 0), HeadMask(1, 3)]]
    lists = {}
    row_hooks = [lists.setdefault(tuple(m), hooks_for(tiny64, m)) for m in masks]
    outs = greedy_rows(tiny64, prompts, 5, row_hooks=row_hooks, top1=True)
    for p, m, o in zip(prompts, masks, outs):
        tokens, top = _per_prompt(tiny64, p, 5, (), m)
        assert o.new_tokens == tokens and torch.equal(o.top1, top)


def test_top1_without_other_hooks_keeps_attention_fused_and_equals_the_pattern_path():
    """With nothing else hooked, the top-1 comes from q and k: every attention call stays on
    the fused path, and the positions equal those read from hook_pattern (forced here by a
    no-op extra hook, which makes the pass read the materialised pattern)."""
    from mechscope.probes import fused_attention as fa
    from tests.tiny import tiny_model

    model = tiny_model(n_key_value_heads=2, dtype=torch.float64)
    state = fa.install(model, True)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 50, (n,), generator=g).tolist() for n in (17, 9, 4)]
    before = dict(state.calls)
    fused = greedy_rows(model, prompts, 6, top1=True, stop_at_eos=False)
    assert state.calls["materialised"] == before["materialised"] and state.calls["fused"] > before["fused"]
    noop = [("blocks.0.hook_resid_pre", lambda t, hook: t)]
    ref = greedy_rows(model, prompts, 6, top1=True, stop_at_eos=False, extra_hooks=noop)
    assert state.calls["materialised"] > before["materialised"]  # the pattern path materialised it
    for a, b in zip(fused, ref):
        assert a.new_tokens == b.new_tokens and torch.equal(a.top1, b.top1)
