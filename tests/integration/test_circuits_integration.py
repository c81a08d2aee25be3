"""Circuit discovery on the embedded SmolLM2: the shipped tasks are tasks the model
does, the batched patching sweep equals one-head-at-a-time patching on the real model (GQA:
9 query heads on 3 K/V heads), and the CLI / bad input paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration


def test_the_model_does_every_shipped_task(smollm2):
    from mechscope.analyses.circuits import TASKS, load_circuit_task, task_pairs
    from mechscope.probes import attribution as attr

    model = smollm2.model
    for task in TASKS:
        recs = load_circuit_task(task)
        assert len(recs) == 64
        pairs = task_pairs(model, recs)  # equal lengths, single-token answers, or InputError
        clean, corrupt = attr.baseline_metrics(model, pairs.subset(range(24)))
        assert (clean > 0).mean() >= 0.9, task
        assert clean.mean() > 2.0, task
        assert corrupt.mean() < clean.mean() - 2.0, task  # the corruption removes what the task needs


def test_batched_sweep_equals_single_head_patching_on_smollm2(smollm2):
    from mechscope.analyses.circuits import load_circuit_task, task_pairs
    from mechscope.probes import attribution as attr

    model = smollm2.model
    pairs = task_pairs(model, load_circuit_task("ioi")[:3])
    layers = [0, 21]
    eff = attr.patch_nodes(model, pairs, "noising", batch_size=3, layers=layers)
    assert np.all(eff.heads[1:21] == 0) and eff.heads.shape == (30, 9)
    with torch.no_grad():
        _, cache = model.run_with_cache(pairs.corrupt)
        base = attr.logit_diff(model(pairs.clean), pairs).double().mean()
        for l, h in [(0, 4), (21, 0), (21, 1), (21, 2)]:  # 21:0..2 share one K/V head
            def hook(z, hook, l=l, h=h):
                z = z.clone()
                z[:, :, h] = cache[f"blocks.{l}.attn.hook_z"][:, :, h]
                return z
            with model.hooks(fwd_hooks=[(f"blocks.{l}.attn.hook_z", hook)]):
                ld = attr.logit_diff(model(pairs.clean), pairs).double().mean()
            # float32 logits of magnitude ~20: agreement to a few 1e-4 absolute
            assert eff.heads[l, h] == pytest.approx(float(ld - base), abs=5e-4)
    assert eff.source < eff.target  # noising moves toward the corrupted (lower) logit difference


def test_cli_discover_and_bad_task(smollm2, tmp_path, capsys):
    from mechscope.app.cli import main

    rc = main(["circuits", "discover", "--task", "induction", "--n-prompts", "4", "--n-latents", "16", "--epochs", "20",
               "--out", str(tmp_path / "d")])
    out = capsys.readouterr().out
    assert rc == 0 and "task check" in out and "positive_only_codes" in out
    assert (tmp_path / "d" / "result.json").is_file()
    rc = main(["circuits", "compare", "--task", "nope"])
    err = capsys.readouterr().err
    assert rc == 2 and "Unknown circuit task 'nope'" in err and err.count("\n") == 1


def test_path_patching_equals_the_one_edge_recipe_on_smollm2(smollm2):
    """Batched path patching (sender delta added at the receiver's own q/k/v input, K/V ungrouped)
    equals Wang et al.'s recipe edge by edge on the real GQA model, and the query / key-value split
    is a real split: L19H2→L20H0 and L17H4→L20H0 enter the same receiver by different paths."""
    from mechscope.analyses.circuits import load_circuit_task, task_pairs
    from mechscope.probes import path_patching as pp
    from tests.unit.test_path_patching import _naive_path_patch

    model = smollm2.model
    pairs = task_pairs(model, load_circuit_task("ioi")[:2])
    edges = [((17, 4), (20, 0)), ((19, 2), (20, 0)), ((20, 0), (23, 7)), ((23, 7), (29, 1))]
    got = pp.path_patch_edges(model, pairs, edges, inputs=("qkv", "q", "kv"), batch_size=2)
    caches = {}
    with torch.no_grad():
        for e, (s, r) in enumerate(edges):
            for gi, kinds in enumerate(("qkv", "q", "kv") if r == (20, 0) else ("qkv",)):
                want = _naive_path_patch(model, pairs, s, r, kinds, caches)
                # float32 logits of magnitude ~20, two different summation orders: a few 1e-4
                assert got.effects[gi, e] == pytest.approx(want, abs=5e-4), (s, r, kinds)
    assert not model.cfg.use_split_qkv_input and not model.cfg.ungroup_grouped_query_attention
    gap = got.source - got.target
    q, kv = got.effects[1] / gap, got.effects[2] / gap
    assert abs(kv[0]) > 5 * abs(q[0]) and abs(q[1]) > 5 * abs(kv[1])
    est = pp.attribution_edges(model, pairs, edges, batch_size=2).normalised()[0]
    assert np.sign(est[2]) == np.sign(got.effects[0, 2] / gap)
