"""Edge circuits as the MIB circuit track scores them: the residual edge graph, EAP / EAP-IG
edge scores against the reference formula written out here, circuit evaluation (full graph =
clean run, empty graph = ablated run), a planted circuit whose CPR is maximal while random
rankings score at chance, and the MIB circuit file round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer

from mechscope.analyses.circuits import edges as ed
from mechscope.analyses.circuits import mib
from mechscope.probes import attribution as attr
from mechscope.probes import edge_attribution as ea
from mechscope.probes.errors import InputError
from tests.tiny import copy_model, tiny_model

N, T = 5, 6
ANS, DIS = 3, 11


def _pairs(model, seed=7, n=N, t=T):
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, model.cfg.d_vocab, size=(n, t))
    corrupt = clean.copy()
    corrupt[:, 1:4] = rng.integers(0, model.cfg.d_vocab, size=(n, 3))
    return attr.make_pairs(model, clean.tolist(), corrupt.tolist(), [[ANS]] * n, [[DIS]] * n), clean, corrupt


@pytest.fixture(scope="module")
def gqa64():
    """2 layers, 4 query heads sharing 2 K/V heads, with MLPs, float64."""
    return tiny_model(n_key_value_heads=2, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# the graph


def test_graph_layout_matches_mib_by_hand():
    g = ea.EdgeGraph(n_layers=2, n_heads=4, mlp=True)
    assert (g.n_forward, g.n_backward) == (1 + 2 * 5, 2 * 13 + 1)
    # edges by hand: layer-0 heads read the input (1 × 12 inputs), MLP 0 reads input + 4 heads,
    # layer-1 heads read 6 nodes (× 12 inputs), MLP 1 reads 10 nodes, the logits all 11
    assert g.n_edges == 12 + 5 + 72 + 10 + 11
    assert g.forward_names[:7] == ["input", "a0.h0", "a0.h1", "a0.h2", "a0.h3", "m0", "a1.h0"]
    assert g.backward_names[:5] == ["a0.h0<q>", "a0.h1<q>", "a0.h2<q>", "a0.h3<q>", "a0.h0<k>"]
    assert g.backward_names[12] == "m0" and g.backward_names[-1] == "logits"
    assert g.edge_index("input->a1.h2<k>") == (0, 13 + 4 + 2)
    assert g.edge_index("a0.h3->m0") == (4, 12)
    assert g.edge_index("m1->logits") == (10, 26)
    names = g.edge_names()
    assert len(names) == len(set(names)) == g.n_edges
    assert "a0.h1->a1.h0<v>" in names and "a1.h0->a0.h1<q>" not in names
    with pytest.raises(InputError):
        g.edge_index("a1.h0->m0")  # a later head cannot feed an earlier MLP


def test_prune_and_topn_by_hand():
    g = ea.EdgeGraph(n_layers=2, n_heads=4, mlp=True)
    keep = np.zeros((g.n_forward, g.n_backward), bool)
    keep[g.edge_index("input->a0.h1<v>")] = True
    keep[g.edge_index("a0.h1->a1.h2<q>")] = True  # a1.h2 reaches nothing downstream: dropped
    keep[g.edge_index("a0.h2->logits")] = True  # a0.h2 has no input: dropped
    keep[g.edge_index("a0.h1->logits")] = True
    edges, nodes = ea.prune(g, keep)
    want = np.zeros_like(keep)
    want[g.edge_index("input->a0.h1<v>")] = want[g.edge_index("a0.h1->logits")] = True
    np.testing.assert_array_equal(edges, want)
    assert nodes.nonzero()[0].tolist() == [0, 2]

    scores = np.zeros((g.n_forward, g.n_backward))
    scores[g.edge_index("input->a0.h1<v>")] = -5.0
    scores[g.edge_index("a0.h1->logits")] = 3.0
    scores[g.edge_index("input->logits")] = 4.0
    only_direct = np.zeros_like(keep)
    only_direct[g.edge_index("input->logits")] = True
    # |scores| top 2: −5 and 4; a0.h1 then has no output, so its input edge goes
    np.testing.assert_array_equal(ea.topn(g, scores, 2, absolute=True), only_direct)
    np.testing.assert_array_equal(ea.topn(g, scores, 3, absolute=True), want | only_direct)
    # signed top 2: 4 and 3; a0.h1 has no input, so its output edge goes
    np.testing.assert_array_equal(ea.topn(g, scores, 2, absolute=False), only_direct)
    assert ea.topn(g, scores, 2, absolute=False, do_prune=False).sum() == 2
    with pytest.raises(InputError):
        ea.topn(g, scores, g.n_edges + 1)


# ---------------------------------------------------------------------------------------------
# scores against the reference formula


def _reference_edge_scores(model, clean, corrupt, steps, ablation="patching"):
    """EAP-IG-inputs written out: per step k the clean prompts run with input embeddings
    abl + k/m (clean − abl) (k = 0 … m − 1; m = 1: the clean embeddings), the gradient of −LD
    w.r.t. every head's q/k/v input, every MLP input and the final residual is taken, and edge
    u→v scores Σ_{prompts, positions} (a_u^abl − a_u^clean) · mean-gradient_v / N."""
    cfg = model.cfg
    g = ea.EdgeGraph.from_model(model)
    L, H = cfg.n_layers, cfg.n_heads
    clean_t, corrupt_t = torch.tensor(clean), torch.tensor(corrupt)

    def outputs(tokens):
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens)
        out = [cache["hook_embed"]]
        for l in range(L):
            for h in range(H):
                out.append(cache[f"blocks.{l}.attn.hook_z"][:, :, h] @ model.W_O[l, h])
            out.append(cache[f"blocks.{l}.hook_mlp_out"])
        return out  # forward order

    a_clean = outputs(clean_t)
    if ablation == "patching":
        a_abl = outputs(corrupt_t)
    else:  # the mean over the corrupted prompts' positions
        a_abl = [x.mean((0, 1), keepdim=True).expand_as(x) for x in outputs(corrupt_t)]
    names = []
    for l in range(L):
        names += [f"blocks.{l}.hook_{x}_input" for x in "qkv"] + [f"blocks.{l}.hook_mlp_in"]
    names.append(f"blocks.{L - 1}.hook_resid_post")
    old = (cfg.use_split_qkv_input, cfg.ungroup_grouped_query_attention, cfg.use_hook_mlp_in)
    cfg.use_split_qkv_input = cfg.ungroup_grouped_query_attention = cfg.use_hook_mlp_in = True
    grads = {n: 0.0 for n in names}
    try:
        fracs = [1.0] if steps == 1 else [k / steps for k in range(steps)]
        for beta in fracs:
            point = (a_abl[0] + beta * (a_clean[0] - a_abl[0])).detach().requires_grad_(True)
            acts = {}

            def grab(a, hook):
                acts[hook.name] = a
                return a

            with model.hooks(fwd_hooks=[("hook_embed", lambda e, hook: point)] + [(n, grab) for n in names]):
                logits = model(clean_t)
                ld = logits[:, -1, ANS] - logits[:, -1, DIS]
                gs = torch.autograd.grad(-ld.sum(), [acts[n] for n in names])
            for n, gr in zip(names, gs):
                grads[n] = grads[n] + gr / len(fracs)
    finally:
        cfg.use_split_qkv_input, cfg.ungroup_grouped_query_attention, cfg.use_hook_mlp_in = old
    want = np.zeros((g.n_forward, g.n_backward))
    for i, j in zip(*np.nonzero(g.real)):
        d = a_abl[i] - a_clean[i]
        b = g.backward_names[j]
        if b == "logits":
            gr = grads[f"blocks.{L - 1}.hook_resid_post"]
        elif b.startswith("m"):
            gr = grads[f"blocks.{int(b[1:])}.hook_mlp_in"]
        else:
            l, h = int(b[1:b.index(".")]), int(b[b.index(".h") + 2:b.index("<")])
            gr = grads[f"blocks.{l}.hook_{b[-2]}_input"][:, :, h]
        want[i, j] = float((d * gr).detach().sum()) / clean.shape[0]
    return want


@pytest.mark.parametrize("steps,ablation", [(1, "patching"), (4, "patching"), (3, "mean")])
def test_edge_scores_equal_the_reference_formula(gqa64, steps, ablation):
    model = gqa64
    pairs, clean, corrupt = _pairs(model)
    want = _reference_edge_scores(model, clean, corrupt, steps, ablation)
    means = None
    if ablation == "mean":
        means = ea.node_means(model, ea.EdgeGraph.from_model(model), pairs, batch_size=2)
    ours = ea.edge_scores(model, pairs, steps=steps, ablation=ablation, batch_size=2, means=means, per_prompt=True)
    scale = np.abs(want).max()
    assert scale > 1e-3
    np.testing.assert_allclose(ours.scores, want, rtol=1e-9, atol=1e-12 * scale)
    np.testing.assert_allclose(ours.per_prompt.mean(0), want, rtol=1e-5, atol=1e-6 * scale)  # float32 copy
    # the K/V inputs are per query head: the two query heads of one K/V group score differently
    g = ea.EdgeGraph.from_model(model)
    assert abs(want[0, g.bwd_head(1, 0, "k")] - want[0, g.bwd_head(1, 1, "k")]) > 1e-6 * scale


def test_full_circuit_is_the_clean_run_and_the_empty_one_the_ablated_run(gqa64):
    model = gqa64
    pairs, clean, corrupt = _pairs(model)
    g = ea.EdgeGraph.from_model(model)
    with torch.no_grad():
        lc, lk = model(torch.tensor(clean))[:, -1], model(torch.tensor(corrupt))[:, -1]
    ld_clean = (lc[:, ANS] - lc[:, DIS]).numpy()
    ld_corrupt = (lk[:, ANS] - lk[:, DIS]).numpy()
    vals = ea.evaluate_circuits(model, pairs, [g.real, np.zeros_like(g.real)], "patching", batch_size=2)
    np.testing.assert_allclose(vals[0], ld_clean, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(vals[1], ld_corrupt, rtol=1e-10, atol=1e-10)
    f = ed.faithfulness(vals.mean(1), ld_clean.mean(), ld_corrupt.mean())
    np.testing.assert_allclose(f, [1.0, 0.0], atol=1e-9)

    # mean ablation, empty circuit: the final residual is Σ over nodes of their mean output (+ biases)
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor(corrupt))
        total = cache["hook_embed"].mean((0, 1))
        for l in range(model.cfg.n_layers):
            total = total + torch.einsum("bthe,hed->d", cache[f"blocks.{l}.attn.hook_z"], model.W_O[l]) / (N * T)
            total = total + cache[f"blocks.{l}.hook_mlp_out"].mean((0, 1)) + model.b_O[l]
        logits = model.unembed(model.ln_final(total.expand(1, 1, -1)))[0, 0]
    means = ea.node_means(model, g, pairs, batch_size=2)
    vals = ea.evaluate_circuits(model, pairs, [g.real, np.zeros_like(g.real)], "mean", batch_size=2, means=means)
    np.testing.assert_allclose(vals[0], ld_clean, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(vals[1], float(logits[ANS] - logits[DIS]), rtol=1e-9, atol=1e-9)


def test_one_pruned_edge_is_path_patching_of_that_edge(gqa64):
    """Removing the single edge a0.h1→a1.h2<v> from the full graph = the clean run with only
    head a1.h2's value input shifted by a0.h1's corrupted − clean output (written out here)."""
    model = gqa64
    pairs, clean, corrupt = _pairs(model)
    g = ea.EdgeGraph.from_model(model)
    circ = g.real.copy()
    circ[g.edge_index("a0.h1->a1.h2<v>")] = False
    got = ea.evaluate_circuits(model, pairs, [circ], batch_size=N)[0]
    with torch.no_grad():
        _, cc = model.run_with_cache(torch.tensor(clean))
        _, kc = model.run_with_cache(torch.tensor(corrupt))
    delta = (kc["blocks.0.attn.hook_z"][:, :, 1] - cc["blocks.0.attn.hook_z"][:, :, 1]) @ model.W_O[0, 1]
    cfg = model.cfg
    old = (cfg.use_split_qkv_input, cfg.ungroup_grouped_query_attention)
    cfg.use_split_qkv_input = cfg.ungroup_grouped_query_attention = True

    def shift(x, hook):
        x = x.clone()
        x[:, :, 2] += delta
        return x

    try:
        with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.1.hook_v_input", shift)]):
            lp = model(torch.tensor(clean))[:, -1]
    finally:
        cfg.use_split_qkv_input, cfg.ungroup_grouped_query_attention = old
    want = (lp[:, ANS] - lp[:, DIS]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    assert np.abs(want - cc["blocks.1.hook_resid_post"].sum().item()).max() > 0  # not trivially the clean run


# ---------------------------------------------------------------------------------------------
# a planted circuit


def planted_model(n_heads: int = 8, d_vocab: int = 20, n_ctx: int = 24, offset: int = 3) -> HookedTransformer:
    """2 attention-only layers of ``n_heads`` heads, float64; only head a0.h0 is wired (as
    tests.tiny.copy_model): its query at position p attends to the key at p − offset and writes
    10 × that key's token. Every other head has zero weights. The answer travels through
    exactly two edges: input→a0.h0<v> and a0.h0→logits."""
    return copy_model(d_vocab=d_vocab, n_ctx=n_ctx, offset=offset, dtype=torch.float64, n_layers=2, n_heads=n_heads)


def planted_pairs(model, n=6, t=8, offset=3, seed=0):
    rng = np.random.default_rng(seed)
    V = model.cfg.d_vocab
    clean = rng.integers(0, V, size=(n, t))
    src = t - 1 - offset  # the token the last position copies
    corrupt = clean.copy()
    corrupt[:, src] = (clean[:, src] + 1 + rng.integers(0, V - 1, size=n)) % V
    return attr.make_pairs(model, clean.tolist(), corrupt.tolist(), [[int(x)] for x in clean[:, src]],
                           [[int(x)] for x in corrupt[:, src]])


def test_planted_circuit_has_maximal_cpr_and_random_scores_at_chance():
    model = planted_model()
    pairs = planted_pairs(model)
    g = ea.EdgeGraph.from_model(model)
    E = g.n_edges
    assert E == 24 + 9 * 24 + 17
    planted = np.zeros((g.n_forward, g.n_backward), bool)
    planted[g.edge_index("input->a0.h0<v>")] = planted[g.edge_index("a0.h0->logits")] = True

    vals = ea.evaluate_circuits(model, pairs, [g.real, np.zeros_like(planted), planted], batch_size=4)
    assert vals[0].mean() > 5 and vals[1].mean() < -5
    np.testing.assert_allclose(vals[2], vals[0], rtol=1e-12, atol=1e-9)  # ablating everything else changes nothing

    for steps in (1, 5):
        s = ea.edge_scores(model, pairs, steps=steps, batch_size=4).scores
        assert set(zip(*np.nonzero(s))) == set(zip(*np.nonzero(planted)))  # only the two planted edges score
        assert (s[planted] > 0).all()  # both help the task

    # the whole analysis: EAP's curve is 0 until the circuit fits (1% = 2 edges), then 1
    params = ed.EdgeCircuitParams(methods=("eap", "eap_ig", "random"), n_random=64, n_boot=200, batch_size=6, held_out=False)
    res = ed.edge_circuits_on(model, pairs, pairs, params)
    sizes = [int(p / 100 * E) for p in ed.PERCENTAGES]
    f_best = np.array([1.0 if n >= 2 else 0.0 for n in sizes])
    cpr_best = sum((b - a) / 100 * (fa + fb) / 2 for a, b, fa, fb in zip(ed.PERCENTAGES, ed.PERCENTAGES[1:], f_best, f_best[1:]))
    cmd_best = sum((b - a) / 100 * ((1 - fa) + (1 - fb)) / 2 for a, b, fa, fb in zip(ed.PERCENTAGES, ed.PERCENTAGES[1:], f_best, f_best[1:]))
    assert cpr_best == pytest.approx(0.9925) and cmd_best == pytest.approx(0.0065)
    summ = res.summary.set_index("method")
    for m in ("eap", "eap_ig"):
        assert summ.loc[m, "cpr"] == pytest.approx(cpr_best, abs=1e-9)
        assert summ.loc[m, "cmd"] == pytest.approx(cmd_best, abs=1e-9)
        assert summ.loc[m, "jaccard"] == pytest.approx(1.0)
    # random: f at n edges = P(both planted edges among n random ones) = n(n − 1) / (E(E − 1))
    f_chance = np.array([n * (n - 1) / (E * (E - 1)) for n in sizes])
    f_chance[-1] = 1.0
    cpr_chance = sum((b - a) / 100 * (fa + fb) / 2 for a, b, fa, fb in zip(ed.PERCENTAGES, ed.PERCENTAGES[1:], f_chance, f_chance[1:]))
    assert cpr_chance == pytest.approx(0.357, abs=0.01)
    # per draw the CPR is a sum of Bernoulli terms; 64 draws: standard error < 0.02
    assert summ.loc["random", "cpr"] == pytest.approx(cpr_chance, abs=0.06)
    assert summ.loc["random", "cpr"] < cpr_best - 0.4
    # intervals contain the point estimate
    for m in ("eap", "random"):
        assert summ.loc[m, "cpr_lo"] <= summ.loc[m, "cpr"] + 1e-12 <= summ.loc[m, "cpr_hi"] + 2e-12


def test_areas_are_the_reference_trapezoids_by_hand():
    x = (0.1, 1.0, 10.0, 100.0)
    f = (0.0, 0.5, 1.5, 1.0)
    under, from1 = ed.areas(x, f)
    assert under == pytest.approx(0.009 * 0.25 + 0.09 * 1.0 + 0.9 * 1.25)
    assert from1 == pytest.approx(0.009 * 0.75 + 0.09 * 0.5 + 0.9 * 0.25)


# ---------------------------------------------------------------------------------------------
# MIB circuit files


@pytest.mark.parametrize("suffix", [".json", ".pt"])
def test_mib_file_round_trip(tmp_path, suffix):
    g = ea.EdgeGraph(n_layers=2, n_heads=4, mlp=True)
    rng = np.random.default_rng(0)
    scores = np.where(g.real, rng.normal(size=(g.n_forward, g.n_backward)), 0.0)
    circ = mib.make_circuit(g, scores, ea.topn(g, scores, 20, do_prune=False))
    path = mib.export_circuit(circ, tmp_path / f"c{suffix}", d_model=32)
    back = mib.import_circuit(path, g)
    np.testing.assert_allclose(back.scores, circ.scores, rtol=1e-6 if suffix == ".pt" else 1e-15)
    np.testing.assert_array_equal(back.in_graph, circ.in_graph)
    np.testing.assert_array_equal(back.nodes, circ.nodes)
    if suffix == ".json":
        d = json.loads(path.read_text())
        assert d["cfg"] == {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 32}
        assert len(d["edges"]) == g.n_edges and d["nodes"]["logits"]["in_graph"] is True
        name = "input->a1.h2<k>"
        assert d["edges"][name]["score"] == pytest.approx(scores[0, 19])


def test_mib_json_written_by_hand_imports(tmp_path):
    g = ea.EdgeGraph(n_layers=2, n_heads=4, mlp=True)
    edges = {n: {"score": 0.0, "in_graph": False} for n in g.edge_names()}
    edges["input->a1.h2<k>"] = {"score": 0.5, "in_graph": True}
    edges["a1.h2->logits"] = {"score": -0.25, "in_graph": True}
    nodes = {n: {"in_graph": n in ("input", "a1.h2")} for n in g.forward_names + ["logits"]}
    p = tmp_path / "hand.json"
    p.write_text(json.dumps({"cfg": {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 32},
                             "nodes": nodes, "edges": edges}))
    c = mib.import_circuit(p, g)
    assert c.in_graph.sum() == 2 and c.in_graph[0, 19] and c.in_graph[1 + 5 + 2, 26]
    assert c.scores[0, 19] == 0.5 and c.scores[8, 26] == -0.25
    assert c.nodes.nonzero()[0].tolist() == [0, 8]
    with pytest.raises(InputError, match="model has 3"):
        mib.import_circuit(p, ea.EdgeGraph(n_layers=3, n_heads=4, mlp=True))
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(InputError):
        mib.import_circuit(bad, g)


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("kw", [{"task": "nope"}, {"percentages": (0, 50)}, {"percentages": (50, 150)}, {"percentages": (5,)},
                                {"methods": ("eap", "acdc")}, {"ablation": "zero"}, {"ranking": "greedy"}, {"n_eval": 0}])
def test_bad_params_raise_one_input_error(kw):
    with pytest.raises(InputError):
        ed.EdgeCircuitParams(**kw)


def test_bad_circuit_size_and_mask_raise_input_error():
    model = planted_model(n_heads=2)
    pairs = planted_pairs(model, n=2)
    params = ed.EdgeCircuitParams(methods=("eap",), n_boot=10, n_boot_jaccard=2, held_out=False)
    res = ed.edge_circuits_on(model, pairs, pairs, params)
    for pct in (0, 101, -1):
        with pytest.raises(InputError):
            res.circuit("eap", pct)
    with pytest.raises(InputError):
        res.circuit("random", 10)
    with pytest.raises(InputError):
        ea.evaluate_circuits(model, pairs, [np.ones((2, 2), bool)])
    assert math.isfinite(res.m_full) and res.figures()


def test_cli_bad_input_is_one_line_before_loading_a_model(capsys, tmp_path):
    from mechscope.app.cli import main

    for argv, msg in ((["circuits", "edges", "--percentages", "0,100"], "(0, 100]"),
                      (["circuits", "edges", "--task", "nope"], "Unknown circuit task 'nope'"),
                      (["circuits", "faithfulness", "--percentages", "5,500"], "(0, 100]"),
                      (["circuits", "export", str(tmp_path), "--file", str(tmp_path / "c.json")], "no saved result")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
