"""Head→head edges: path patching and edge attribution on hand-wired models whose
edges are known, a linear toy where attribution is exact, an independent un-batched path
patching on a GQA model, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mechscope.probes import attribution as attr
from mechscope.probes import path_patching as pp
from mechscope.probes.errors import InputError

MARK = 8  # tokens: names 0–3, fillers 4–7, marker 8
N_VOCAB, N_CTX = 9, 8
U, W = N_VOCAB + N_CTX, N_VOCAB + N_CTX + 1  # two extra residual dimensions
A, C, B, D = (0, 0), (0, 1), (1, 0), (1, 1)


def two_head_path_model() -> HookedTransformer:
    """Attention-only, no norms; residual = [token one-hot | position one-hot | u | w].

    A (L0H0) is a previous-token head that writes u = "the previous token was the marker".
    B (L1H0) has a constant query (bias only) and keys that read u, so it attends to the token
    right after the marker and copies it (names only) into the unembedding: the A→B path through
    B's *key* input carries the task. C (L0H1) attends uniformly and writes the marker fraction
    into w (strongly) and into u (weakly, 0.3): a smaller C→B edge. D (L1H1) reads and writes
    filler dimensions only: every edge into D is 0."""
    d_model = N_VOCAB + N_CTX + 2
    cfg = HookedTransformerConfig(n_layers=2, d_model=d_model, n_heads=2, d_head=N_CTX, d_vocab=N_VOCAB, n_ctx=N_CTX,
                                  attn_only=True, normalization_type=None, positional_embedding_type="standard",
                                  act_fn="relu", d_mlp=None, device="cpu", dtype=torch.float64, default_prepend_bos=False)
    m = HookedTransformer(cfg, move_to_device=False)
    g = torch.Generator().manual_seed(0)
    a = (30.0 * N_CTX ** 0.5) ** 0.5
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.W_E[torch.arange(N_VOCAB), torch.arange(N_VOCAB)] = 1.0
        m.W_pos[torch.arange(N_CTX), N_VOCAB + torch.arange(N_CTX)] = 1.0
        m.W_U[torch.arange(N_VOCAB), torch.arange(N_VOCAB)] = 1.0
        l0, l1 = m.blocks[0].attn, m.blocks[1].attn
        for p in range(1, N_CTX):  # A: query at p matches the key at p − 1
            l0.W_Q[0, N_VOCAB + p, p] = a
            l0.W_K[0, N_VOCAB + p - 1, p] = a
        l0.W_V[0, MARK, 0] = 1.0
        l0.W_O[0, 0, U] = 1.0
        l0.W_V[1, MARK, 0] = 1.0  # C: uniform attention, marker fraction into w and (weakly) u
        l0.W_O[1, 0, W] = 2.0
        l0.W_O[1, 0, U] = 0.3
        l1.b_Q[0, 0] = 3.0 * N_CTX ** 0.5  # B: score 3·u
        l1.W_K[0, U, 0] = 1.0
        l1.W_V[0, :4, :4] = torch.eye(4, dtype=torch.float64)
        l1.W_O[0, :4, :4] = 3 * torch.eye(4, dtype=torch.float64)
        l1.W_V[1, 4:8, :4] = torch.randn(4, 4, generator=g, dtype=torch.float64)  # D: fillers only
        l1.W_O[1, :4, 4:8] = torch.randn(4, 4, generator=g, dtype=torch.float64)
    m.eval()
    return m


def marker_pairs(model, n: int = 10, seed: int = 0) -> attr.Pairs:
    """Clean: the marker precedes name a (answer); corrupt: it precedes name d (distractor)."""
    rng = np.random.default_rng(seed)
    clean, corrupt, ans, dis = [], [], [], []
    for _ in range(n):
        seq = [int(x) for x in rng.choice([4, 5, 6, 7], size=7)]
        i, j = sorted(rng.choice([1, 4], size=2, replace=False))  # marker positions 1 / 4 → names at 2 / 5
        a, d = (int(x) for x in rng.choice(4, size=2, replace=False))
        c, k = seq.copy(), seq.copy()
        c[i + 1] = k[i + 1] = a
        c[j + 1] = k[j + 1] = d
        c[i], k[j] = MARK, MARK
        if rng.random() < 0.5:  # the answer's name sometimes comes second
            c, k = k, c
            a, d = d, a
        clean.append(c)
        corrupt.append(k)
        ans.append([a])
        dis.append([d])
    return attr.make_pairs(model, clean, corrupt, ans, dis)


def test_planted_path_has_the_largest_edge_and_attribution_ranks_it_first():
    m = two_head_path_model()
    pairs = marker_pairs(m)
    edges = pp.edges_among([A, C, B, D])
    assert edges == [(A, B), (A, D), (C, B), (C, D)]
    gt = pp.path_patch_edges(m, pairs, edges, inputs=("qkv", "q", "kv"), batch_size=4, max_rows=8)
    eff = gt.normalised()
    assert gt.target > 1.0 and gt.source < -1.0  # the model does the task; the corruption flips it
    qkv, q, kv = eff
    # A→B: B's key input sees the corrupted "after the marker" flags → B copies the distractor.
    # Its own u plus C's weak u remain clean, so the flip is most, not all, of the gap
    assert qkv[0] > 0.5 and qkv[0] == pytest.approx(kv[0], abs=1e-12)
    assert 0 < qkv[2] < qkv[0] / 3  # C→B: a real, smaller edge
    assert np.abs(qkv[[1, 3]]).max() < 1e-12  # nothing reaches D
    assert np.abs(q).max() < 1e-12  # B's query is a constant bias: no query path at all
    for steps in (1, 4):
        est = pp.attribution_edges(m, pairs, edges, steps=steps, inputs=("qkv", "q"), batch_size=4).normalised()
        assert int(np.argmax(np.abs(est[0]))) == 0
        assert est[0][0] > 0 and est[0][2] > 0  # the right sign (fraction of the gap moved)
        assert np.abs(est[0][[1, 3]]).max() < 1e-12 and np.abs(est[1]).max() < 1e-12


def linear_two_layer() -> HookedTransformer:
    """Attention-only, no norms, random weights; layer 1's queries and keys are zero, so its
    attention is uniform over the prefix whatever its input: the metric is affine in every
    layer-1 head's input, and edge attribution must equal path patching exactly."""
    cfg = HookedTransformerConfig(n_layers=2, d_model=12, n_heads=3, d_head=4, d_vocab=10, n_ctx=8, attn_only=True,
                                  normalization_type=None, positional_embedding_type="standard", act_fn="relu",
                                  d_mlp=None, seed=5, device="cpu", dtype=torch.float64, default_prepend_bos=False)
    m = HookedTransformer(cfg, move_to_device=False)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.8)
        att = m.blocks[1].attn
        for p in (att.W_Q, att.W_K, att.b_Q, att.b_K):
            p.zero_()
    return m


def test_edge_attribution_is_exact_where_the_path_is_linear():
    m = linear_two_layer()
    rng = np.random.default_rng(6)
    clean = rng.integers(0, 10, size=(6, 5))
    corrupt = rng.integers(0, 10, size=(6, 5))
    pairs = attr.make_pairs(m, clean.tolist(), corrupt.tolist(), [[2, 5]] * 6, [[7]] * 6)
    edges = pp.edges_among([(0, h) for h in range(3)] + [(1, h) for h in range(3)])
    exact = pp.path_patch_edges(m, pairs, edges, inputs=("qkv", "v"), batch_size=4, max_rows=12)
    assert np.abs(exact.effects).max() > 0.1  # not a trivially zero comparison
    for steps in (1, 3):  # the gradient is the same at every interpolation point
        est = pp.attribution_edges(m, pairs, edges, steps=steps, inputs=("qkv", "v"), batch_size=4)
        np.testing.assert_allclose(est.effects, exact.effects, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(exact.effects[0], exact.effects[1], rtol=1e-9, atol=1e-11)  # only v matters here


def _naive_path_patch(model, pairs, snd, rcv, kinds, caches=None):
    """Wang et al.'s recipe, one edge at a time, without the batched Δ shortcut: (1) run the
    target with the sender's z from the source run and every other head and MLP frozen to the
    target run, keep ``resid_pre`` of the receiver's layer; (2) run the target with only the
    receiver's ``kinds`` inputs set to that residual (K/V ungrouped), everything else live.
    ``caches``: a dict reused across calls (source / target caches, step-1 residuals)."""
    caches = {} if caches is None else caches
    if "src" not in caches:
        caches["src"] = model.run_with_cache(pairs.corrupt)[1]
        logits, caches["tgt"] = model.run_with_cache(pairs.clean)
        caches["base"] = attr.logit_diff(logits, pairs).mean()
    src, tgt = caches["src"], caches["tgt"]
    if (snd, rcv) not in caches:
        freeze = []
        for l in range(model.cfg.n_layers):
            def zhook(z, hook, l=l):
                z = tgt[hook.name].clone()
                if l == snd[0]:
                    z[:, :, snd[1]] = src[hook.name][:, :, snd[1]]
                return z
            freeze.append((f"blocks.{l}.attn.hook_z", zhook))
            if not model.cfg.attn_only:
                freeze.append((f"blocks.{l}.hook_mlp_out", lambda x, hook: tgt[hook.name]))
        kept = {}
        with model.hooks(fwd_hooks=freeze + [(f"blocks.{rcv[0]}.hook_resid_pre", lambda x, hook: kept.setdefault("r", x))]):
            model(pairs.clean, stop_at_layer=rcv[0] + 1)
        caches[(snd, rcv)] = kept["r"]
    resid = caches[(snd, rcv)]

    def set_input(x, hook):
        x = x.clone()
        x[:, :, rcv[1]] = resid
        return x
    hooks = [(f"blocks.{rcv[0]}.hook_{k}_input", set_input) for k in kinds]
    with pp.split_head_inputs(model), model.hooks(fwd_hooks=hooks):
        patched = attr.logit_diff(model(pairs.clean), pairs).mean()
    return float(patched - caches["base"])


def test_batched_path_patching_equals_the_one_edge_recipe_on_a_gqa_model():
    """RMSNorm, rotary, gated MLPs, 4 query heads on 2 K/V heads (tiny, float64)."""
    from tests.tiny import tiny_model

    m = tiny_model(n_layers=3, n_key_value_heads=2, dtype=torch.float64)
    rng = np.random.default_rng(7)
    clean = rng.integers(0, 50, size=(4, 6))
    corrupt = clean.copy()
    corrupt[:, 1:3] = rng.integers(0, 50, size=(4, 2))
    pairs = attr.make_pairs(m, clean.tolist(), corrupt.tolist(), [[3]] * 4, [[9]] * 4)
    edges = [((0, 1), (1, 0)), ((0, 1), (1, 1)), ((0, 3), (2, 2)), ((1, 2), (2, 3))]  # (1,0), (1,1) share K/V
    got = pp.path_patch_edges(m, pairs, edges, inputs=("qkv", "q", "kv"), batch_size=3, max_rows=6)
    assert np.abs(got.effects).max() > 1e-3
    caches = {}
    with torch.no_grad():
        for e, (s, r) in enumerate(edges):
            for gi, kinds in enumerate(("qkv", "q", "kv")):
                want = _naive_path_patch(m, pairs, s, r, kinds, caches)
                assert got.effects[gi, e] == pytest.approx(want, abs=1e-10)
    # two query heads of one K/V group get different key/value-path effects (K/V ungrouped)
    assert abs(got.effects[2, 0] - got.effects[2, 1]) > 1e-6
    assert not m.cfg.use_split_qkv_input and not m.cfg.ungroup_grouped_query_attention  # restored


def test_split_head_inputs_leave_the_output_unchanged_and_are_restored_on_error(tiny_gqa):
    toks = torch.tensor([[1, 5, 7, 9, 2]])
    with torch.no_grad():
        ref = tiny_gqa(toks)
        with pp.split_head_inputs(tiny_gqa):
            split = tiny_gqa(toks)
    torch.testing.assert_close(split, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    with pytest.raises(RuntimeError), pp.split_head_inputs(tiny_gqa):
        raise RuntimeError("boom")
    assert not tiny_gqa.cfg.use_split_qkv_input and not tiny_gqa.cfg.ungroup_grouped_query_attention


@pytest.mark.parametrize("edges,msg", [
    ([((1, 0), (1, 2))], "receiver's layer must be above"),
    ([((1, 0), (0, 2))], "receiver's layer must be above"),
    ([((0, 0), (5, 0))], "Unknown node L5H0"),
    ([("L0H0", "L1H9")], "Unknown node L1H9"),
    ([("head0", "L1H1")], "Unknown node 'head0'"),
    ([], "No edges"),
])
def test_bad_edges_one_clear_message(tiny, edges, msg):
    pairs = attr.make_pairs(tiny, [[1, 2, 3]], [[1, 4, 3]], [[1]], [[2]])
    with pytest.raises(InputError, match=msg):
        pp.path_patch_edges(tiny, pairs, edges)
    with pytest.raises(InputError, match=msg):
        pp.attribution_edges(tiny, pairs, edges)


def test_bad_receiver_inputs_refused(tiny):
    pairs = attr.make_pairs(tiny, [[1, 2, 3]], [[1, 4, 3]], [[1]], [[2]])
    with pytest.raises(InputError, match="Receiver inputs must be among"):
        pp.path_patch_edges(tiny, pairs, [((0, 0), (1, 0))], inputs=("x",))


def test_compare_edges_scores_and_aucs_on_the_planted_path(tmp_path):
    """The analysis layer: top-N heads → path-patched edge ground truth, every method's edge
    scores, edge ROC-AUC beside node AUC, the graph's edge matrix, and a save/load round trip."""
    import pandas as pd

    from mechscope.analyses.circuits import CircuitCompareParams, CircuitCompareResult, NodeScores, edge_ground_truth_and_scores
    from mechscope.probes.results import Result

    m = two_head_path_model()
    pairs = marker_pairs(m)
    truth, _ = attr.patch_nodes(m, pairs, "noising", batch_size=5).normalised()
    assert abs(truth[A]) > 0.9 and abs(truth[B]) > 0.9 and abs(truth[D]) < 1e-12
    sae = np.zeros((4, 4))
    sae[0, 2] = sae[2, 0] = 1.0  # the discrete SAE's co-occurrence, hand-made: A–B only
    p = CircuitCompareParams(task="ioi", thresholds=(0.01, 0.5), edge_top_n=4, ig_steps=3, edge_inputs=("qkv", "q"))
    seconds, passes = {}, {}
    runs = {"discrete_sae": NodeScores(scores=np.zeros_like(truth), passes={}, edge_counts=sae)}
    flat, edge_truth, scores = edge_ground_truth_and_scores(m, pairs, p, truth, runs, seconds, passes)
    names = [(int(a), int(b)) for a, b in flat]
    assert sorted(names) == [(0, 2), (0, 3), (1, 2), (1, 3)]  # flat index = layer × 2 + head
    ab = names.index((0, 2))
    assert edge_truth[0, ab] > 0.5 and np.abs(edge_truth[1]).max() < 1e-12  # no query path into B
    assert set(seconds) == {"patching_edges", "attribution_patching_edges", "eap_ig_edges"}
    methods = ("patching", "attribution_patching", "eap_ig", "discrete_sae")
    res = CircuitCompareResult(
        model_id="toy", params=p, methods=methods, scores=np.stack([np.abs(truth)] * 4), truth=truth, mlp=np.zeros(2),
        edge_counts=sae, top_codes=("",) * 4, seconds={"patching": 1.0, **seconds}, passes={"patching": {}, **passes},
        faithfulness=pd.DataFrame({"method": ["eap_ig"], "size": [1], "mode": ["keep"], "recovered": [0.5]}),
        check={}, n_used=10, edges=flat, edge_truth=edge_truth, edge_scores=np.stack([scores[k] for k in methods]))
    tab = res.auc_table(anchors=True)
    ours = tab[tab.threshold == 0.5]
    assert (ours.gt_edges == 1).all() and (ours.n_edges == 4).all()
    # A→B alone in the ground truth at 0.5: every method ranks it first → AUC 1
    assert ours.edge_auc.tolist() == [1.0, 1.0, 1.0, 1.0]
    low = tab[tab.threshold == 0.01].set_index("method").edge_auc
    # A→B and C→B at 0.01; the hand-made SAE scores C→B 0, tied with both negatives: (2 + 2·½) / 4
    assert low["attribution_patching"] == 1.0 and low["discrete_sae"] == pytest.approx(0.75)
    assert tab.method.str.endswith("— theirs").sum() == 2  # the GPT-2 anchors for IOI
    mat = res.edge_matrix("eap_ig")
    assert mat[0, 2] == pytest.approx(scores["eap_ig"][ab]) and mat[2, 0] == 0
    assert "edge_roc" in res.figures()
    back = Result.load(res.save(tmp_path / "r"))
    np.testing.assert_array_equal(back.edges, flat)
    np.testing.assert_array_equal(back.edge_truth, edge_truth)


def test_a_registered_method_is_compared_on_nodes_edges_faithfulness_and_timing(monkeypatch):
    """Adding a method to circuit_compare is one registration: an oracle scoring the wired heads
    A and B (and the edge A→B) 1 and everything else 0 gets node and edge AUC 1 against the
    patching ground truth at 0.5 (A and B alone; A→B alone), faithfulness rows equal to those of
    any ranking with the same top 2, and its own timing."""
    from mechscope.analyses.circuits import CircuitCompareParams, compare, methods

    m = two_head_path_model()
    pairs = marker_pairs(m)

    def nodes(model, pairs, params, progress=None):
        s = np.zeros((2, 2))
        s[A] = s[B] = 1.0
        return methods.NodeScores(scores=s, passes={"forward_prompt_sets": 0})

    def edges(model, pairs, params, edge_list, flat, run=None, progress=None):
        return methods.EdgeScores(scores=np.array([float(e == (A, B)) for e in edge_list]), passes={"forward_prompt_sets": 0})

    monkeypatch.setitem(methods.METHODS, "oracle", methods.CircuitMethod("oracle", "the wired heads", nodes, edges))
    monkeypatch.setattr(compare, "positive_pairs", lambda model, task, n: (pairs, {"frac_positive": 1.0, "mean_ld_clean": 1.0}))
    p = CircuitCompareParams(task="ioi", n_prompts=10, batch_size=5, thresholds=(0.5,), ig_steps=2, n_latents=8, epochs=20,
                             sizes=(2,), edge_top_n=4)
    res = compare.circuit_compare(m, p)
    assert res.methods == ("patching", "attribution_patching", "eap_ig", "discrete_sae", "oracle")
    gt = np.abs(res.truth) >= 0.5
    assert gt[A] and gt[B] and gt.sum() == 2
    np.testing.assert_array_equal(res.scores[-1], [[1, 0], [1, 0]])
    tab = res.auc_table().set_index("method")
    assert tab.loc["oracle", "node_auc"] == 1.0 and tab.loc["oracle", "edge_auc"] == 1.0
    assert {"oracle", "oracle_edges"} <= set(res.seconds) and res.passes["oracle_edges"] == {"forward_prompt_sets": 0}
    faith = res.faithfulness.set_index(["method", "mode"])
    patch_top2 = set(np.argsort(-res.scores[0].ravel(), kind="stable")[:2].tolist())
    assert patch_top2 == {0, 2}  # A, B: the ground truth ranks the same two heads first
    for mode in ("keep", "ablate"):
        assert faith.loc[("oracle", mode), "recovered"] == faith.loc[("patching", mode), "recovered"]


def test_the_registry_holds_the_compared_methods_with_one_ground_truth():
    from mechscope.analyses.circuits import METHODS, CircuitMethod, ground_truth, register

    assert list(METHODS) == ["patching", "attribution_patching", "eap_ig", "discrete_sae"]
    assert ground_truth() is METHODS["patching"] and sum(m.ground_truth for m in METHODS.values()) == 1
    with pytest.raises(ValueError, match="registered twice"):
        register(METHODS["eap_ig"])
    with pytest.raises(ValueError, match="Only one"):
        register(CircuitMethod("another_truth", "", METHODS["patching"].nodes, METHODS["patching"].edges, ground_truth=True))
    assert "another_truth" not in METHODS
