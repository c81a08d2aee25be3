"""Circuit discovery: patching, attribution patching, EAP-IG, the discrete-SAE method,
ROC-AUC — on hand-built models and rankings whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mechscope.analyses.circuits import roc_auc, roc_curve
from mechscope.probes import attribution as attr
from mechscope.probes.errors import InputError
from mechscope.saes import discrete

NAMES, FILLERS = (0, 1, 2, 3), (4, 5, 6, 7)
PLANTED = (1, 2)  # layer 1, head 2


def planted_model(seed: int = 0) -> HookedTransformer:
    """Attention-only, no norms, one-hot token embeddings (d_model = d_vocab = 8). Every head
    attends uniformly (W_Q = 0). Head L1H2 copies the *name* tokens (0–3) into their own
    unembedding directions; every other head reads only the filler dimensions (4–7) and writes
    into the filler dimensions, so it sees nothing that differs between a clean prompt and its
    corruption (a name swapped for another) and cannot move the name logits."""
    cfg = HookedTransformerConfig(n_layers=2, d_model=8, n_heads=4, d_head=4, d_vocab=8, n_ctx=16, attn_only=True,
                                  normalization_type=None, positional_embedding_type="standard", act_fn="relu",
                                  d_mlp=None, seed=seed, device="cpu", dtype=torch.float64, default_prepend_bos=False)
    m = HookedTransformer(cfg, move_to_device=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in m.named_parameters():
            p.zero_()
        m.W_E.copy_(torch.eye(8, dtype=torch.float64))
        m.W_U.copy_(torch.eye(8, dtype=torch.float64))
        for l in range(2):
            for h in range(4):
                if (l, h) == PLANTED:
                    m.blocks[l].attn.W_V[h, :4, :4] = torch.eye(4, dtype=torch.float64) * 3
                    m.blocks[l].attn.W_O[h, :4, :4] = torch.eye(4, dtype=torch.float64)
                else:  # irrelevant: filler dims in, filler dims out
                    m.blocks[l].attn.W_V[h, 4:, :] = torch.randn(4, 4, generator=g, dtype=torch.float64)
                    m.blocks[l].attn.W_O[h, :, 4:] = torch.randn(4, 4, generator=g, dtype=torch.float64)
    m.eval()
    return m


def planted_pairs(model, n: int = 12, seed: int = 0) -> attr.Pairs:
    """Fillers with one name at a random place; the corruption puts another name there. Clean
    names are 0/1, corrupting names 2/3 (so the two sides use different codes)."""
    rng = np.random.default_rng(seed)
    clean, corrupt, ans, dis = [], [], [], []
    for _ in range(n):
        seq = list(rng.choice(FILLERS, size=6))
        pos = int(rng.integers(0, 5))
        a, b = int(rng.choice([0, 1])), int(rng.choice([2, 3]))
        c, k = seq.copy(), seq.copy()
        c[pos], k[pos] = a, b
        clean.append(c)
        corrupt.append(k)
        ans.append([a])
        dis.append([b])
    return attr.make_pairs(model, clean, corrupt, ans, dis)


def _rank_first(scores: np.ndarray) -> tuple[int, int]:
    i = int(np.argmax(scores))
    return divmod(i, scores.shape[1])


def test_planted_head_ranked_first_by_every_method():
    m = planted_model()
    pairs = planted_pairs(m)
    patch = attr.patch_nodes(m, pairs, "noising", batch_size=5)
    # the clean logit difference is the planted head's copy (3 × attention weight > 0), the
    # corrupted one its negative: the planted head alone moves 100 % of the gap, others 0
    truth, _ = patch.normalised()
    assert truth[PLANTED] == pytest.approx(1.0, abs=1e-9)
    others = np.delete(truth.ravel(), PLANTED[0] * 4 + PLANTED[1])
    assert np.abs(others).max() < 1e-9
    for steps in (1, 3):
        a = attr.attribution_nodes(m, pairs, "noising", steps=steps, batch_size=5)
        assert _rank_first(np.abs(a.heads)) == PLANTED
    pos = attr.head_vectors(m, pairs.clean, pairs.lengths)
    neg = attr.head_vectors(m, pairs.corrupt, pairs.lengths)
    saes_ = discrete.train_head_saes(torch.cat([pos, neg]), n_latents=16, l1=0.02, epochs=200, seed=0)
    codes = saes_.codes(torch.cat([pos, neg])).numpy()
    counts = discrete.unique_positive_counts(codes[:len(pos)], codes[len(pos):])
    assert _rank_first(counts.reshape(2, 4)) == PLANTED
    # irrelevant heads see identical inputs on each clean/corrupt pair: no positive-only code at all
    assert counts.sum() == counts[PLANTED[0] * 4 + PLANTED[1]] > 0


def test_batched_patching_equals_one_head_at_a_time(tiny64):
    """The batch-expanded sweep (all heads of a layer in one forward, from resid_pre) equals
    patching a single head per full forward pass."""
    rng = np.random.default_rng(1)
    clean = rng.integers(0, 50, size=(5, 7))
    corrupt = clean.copy()
    corrupt[:, 2] = rng.integers(0, 50, size=5)
    pairs = attr.make_pairs(tiny64, clean.tolist(), corrupt.tolist(), [[3]] * 5, [[4, 9]] * 5)
    eff = attr.patch_nodes(tiny64, pairs, "noising", batch_size=2)
    _, cache = tiny64.run_with_cache(pairs.corrupt)
    base = attr.logit_diff(tiny64(pairs.clean), pairs).mean()
    for l, h in [(0, 0), (0, 3), (1, 2)]:
        def hook(z, hook, h=h, l=l):
            z = z.clone()
            z[:, :, h] = cache[f"blocks.{l}.attn.hook_z"][:, :, h]
            return z
        with tiny64.hooks(fwd_hooks=[(f"blocks.{l}.attn.hook_z", hook)]):
            ld = attr.logit_diff(tiny64(pairs.clean), pairs).mean()
        assert eff.heads[l, h] == pytest.approx(float((ld - base).detach()), abs=1e-10)
    def mhook(x, hook):
        return cache["blocks.1.hook_mlp_out"]
    with tiny64.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", mhook)]):
        ld = attr.logit_diff(tiny64(pairs.clean), pairs).mean()
    assert eff.mlp[1] == pytest.approx(float((ld - base).detach()), abs=1e-10)


def test_gqa_heads_are_query_heads(tiny_gqa):
    """With 4 query heads on 2 K/V heads, patching one query head is not patching its K/V
    group: two query heads of one group get different effects."""
    rng = np.random.default_rng(2)
    clean = rng.integers(0, 50, size=(4, 6))
    corrupt = clean.copy()
    corrupt[:, 1] = (corrupt[:, 1] + 7) % 50
    pairs = attr.make_pairs(tiny_gqa, clean.tolist(), corrupt.tolist(), [[1]] * 4, [[2]] * 4)
    eff = attr.patch_nodes(tiny_gqa, pairs, "noising", batch_size=4)
    assert eff.heads.shape == (2, 4)
    assert abs(eff.heads[1, 0] - eff.heads[1, 1]) > 1e-4  # heads 0, 1 share K/V but differ
    a = attr.attribution_nodes(tiny_gqa, pairs, "noising")
    assert a.heads.shape == (2, 4) and np.isfinite(a.heads).all()


def linear_toy() -> HookedTransformer:
    """One attention-only layer, no norms: the logits are linear in every head's z, so
    attribution patching is exact for every head."""
    cfg = HookedTransformerConfig(n_layers=1, d_model=12, n_heads=3, d_head=4, d_vocab=10, n_ctx=8, attn_only=True,
                                  normalization_type=None, positional_embedding_type="standard", act_fn="relu",
                                  d_mlp=None, seed=3, device="cpu", dtype=torch.float64, default_prepend_bos=False)
    m = HookedTransformer(cfg, move_to_device=False)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)
    return m


def test_attribution_patching_is_exact_on_a_linear_toy():
    m = linear_toy()
    rng = np.random.default_rng(4)
    clean = rng.integers(0, 10, size=(6, 5))
    corrupt = rng.integers(0, 10, size=(6, 5))
    pairs = attr.make_pairs(m, clean.tolist(), corrupt.tolist(), [[2, 5]] * 6, [[7]] * 6)
    exact = attr.patch_nodes(m, pairs, "noising", batch_size=4)
    atp = attr.attribution_nodes(m, pairs, "noising", steps=1, batch_size=4)
    assert np.abs(exact.heads).max() > 0.1  # not a trivially zero comparison
    np.testing.assert_allclose(atp.heads, exact.heads, rtol=1e-9, atol=1e-10)
    # the downstream map is linear, so the gradient is the same at every interpolation point
    ig = attr.attribution_nodes(m, pairs, "noising", steps=4, batch_size=4)
    np.testing.assert_allclose(ig.heads, exact.heads, rtol=1e-9, atol=1e-10)
    den = attr.attribution_nodes(m, pairs, "denoising", steps=1)
    np.testing.assert_allclose(den.heads, attr.patch_nodes(m, pairs, "denoising").heads, rtol=1e-9, atol=1e-10)


def test_eap_ig_with_one_step_is_attribution_patching(tiny64):
    rng = np.random.default_rng(5)
    clean = rng.integers(0, 50, size=(4, 6))
    corrupt = rng.integers(0, 50, size=(4, 6))
    pairs = attr.make_pairs(tiny64, clean.tolist(), corrupt.tolist(), [[1]] * 4, [[2]] * 4)
    atp = attr.attribution_nodes(tiny64, pairs, steps=1)
    # AtP by hand: gradient of the summed metric at the clean run, times (corrupt − clean) z
    _, cc = tiny64.run_with_cache(pairs.corrupt)
    store = {}
    def keep(z, hook):
        z.retain_grad()
        store[hook.name] = z
        return z
    emb = {}
    def leaf(e, hook):
        emb["e"] = e.detach().requires_grad_(True)
        return emb["e"]
    with tiny64.hooks(fwd_hooks=[("hook_embed", leaf)] + [(f"blocks.{l}.attn.hook_z", keep) for l in range(2)]):
        attr.logit_diff(tiny64(pairs.clean), pairs).sum().backward()
    for l in range(2):
        z = store[f"blocks.{l}.attn.hook_z"]
        want = ((cc[f"blocks.{l}.attn.hook_z"] - z.detach()) * z.grad).sum((0, 1, 3)) / 4
        np.testing.assert_allclose(atp.heads[l], want.numpy(), rtol=1e-9, atol=1e-12)
    ig = attr.attribution_nodes(tiny64, pairs, steps=3)
    assert np.abs(ig.heads - atp.heads).max() > 1e-6  # the tiny model is non-linear: more steps differ


def test_roc_auc_on_a_hand_made_ranking():
    # positives at ranks 1, 2, 4 of 6 (scores 6, 5, 3): of the 9 (pos, neg) pairs, the positive
    # wins 8 (the positive with score 3 loses to the negative with 4) → 8/9
    scores = [6, 5, 4, 3, 2, 1]
    labels = [1, 1, 0, 1, 0, 0]
    assert roc_auc(scores, labels) == pytest.approx(8 / 9)
    assert roc_auc([1, 1, 1, 1], [1, 0, 1, 0]) == pytest.approx(0.5)  # ties count half
    assert roc_auc([3, 2, 1], [0, 0, 1]) == pytest.approx(0.0)
    fpr, tpr = roc_curve(scores, labels)
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    assert np.trapezoid(tpr, fpr) == pytest.approx(8 / 9)


def test_discrete_codes_node_and_edge_counts_by_hand():
    # 3 heads. head 0: positive codes {1, 2}, negative {2} → 1 positive-only code
    # head 1: positive {5}, negative {5} → 0; head 2: positive {0, 3, 4}, negative {9} → 3
    pos = np.array([[1, 5, 0], [2, 5, 3], [1, 5, 4]])
    neg = np.array([[2, 5, 9], [2, 5, 9]])
    counts = discrete.unique_positive_counts(pos, neg)
    np.testing.assert_array_equal(counts, [1, 0, 3])
    e = np.exp([1.0, 0.0, 3.0])
    np.testing.assert_allclose(discrete.node_scores(pos, neg), e / e.sum())
    edges = discrete.edge_counts(pos, neg, n_codes=10)
    # pair (0, 1): positive pairs {(1,5), (2,5)}, negative {(2,5)} → 1; (1, 0) the same
    # pair (0, 2): positive {(1,0), (2,3), (1,4)}, negative {(2,9)} → 3; (1, 2): {(5,0),(5,3),(5,4)} vs {(5,9)} → 3
    np.testing.assert_array_equal(edges, [[0, 1, 3], [1, 0, 3], [3, 3, 0]])


def test_per_head_sae_rows_stay_unit_norm_and_codes_separate_clusters():
    # two well separated clusters per head; the argmax code must tell them apart
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(2, 3, 6, generator=g) * 4
    x = torch.cat([centers[0] + 0.05 * torch.randn(10, 3, 6, generator=g),
                   centers[1] + 0.05 * torch.randn(10, 3, 6, generator=g)])
    s = discrete.train_head_saes(x, n_latents=8, l1=0.02, epochs=300, seed=1, shared=False)  # per-head SAEs
    torch.testing.assert_close(s.W_enc.norm(dim=-1), torch.ones(3, 8), rtol=1e-5, atol=1e-5)
    codes = s.codes(x).numpy()
    assert s.losses[-1] < s.losses[0]
    for h in range(3):
        assert set(codes[:10, h]).isdisjoint(set(codes[10:, h]))


@pytest.mark.parametrize("clean,corrupt,ans,dis,msg", [
    ([[1, 2, 3]], [[1, 2]], [[1]], [[2]], "equal lengths"),
    ([[1, 2]], [[1, 3]], [[]], [[2]], "no answers"),
    ([], [], [], [], "no prompts"),
    ([[1, 2]], [[1, 3]], [[99]], [[2]], "out of range"),
])
def test_bad_input_one_clear_message(tiny, clean, corrupt, ans, dis, msg):
    with pytest.raises(InputError, match=msg):
        attr.make_pairs(tiny, clean, corrupt, ans, dis)


def test_no_positive_prompts_is_refused(monkeypatch):
    from mechscope.analyses import circuits

    m = planted_model()
    pairs = planted_pairs(m, n=4)
    swapped = attr.Pairs(pairs.clean, pairs.corrupt, pairs.lengths, pairs.distractors, pairs.distractor_mask,
                         pairs.answers, pairs.answer_mask)  # answers and distractors swapped: never right
    with pytest.raises(InputError, match="no positive prompts"):
        circuits.select_positive(m, swapped, 4)


def test_isometric_head_vectors_keep_the_geometry(tiny64):
    """The d_head-wide coordinates have exactly the norms and inner products of the d_model
    head outputs (they are coordinates in an orthonormal basis of each head's output space)."""
    toks = torch.tensor([[1, 5, 7, 9, 2], [3, 3, 8, 0, 4], [6, 1, 2, 2, 2]])
    lengths = torch.tensor([5, 4, 3])
    full = attr.head_vectors(tiny64, toks, lengths)
    iso = attr.head_vectors(tiny64, toks, lengths, isometric=True)
    assert full.shape == (3, 8, 32) and iso.shape == (3, 8, 8)
    gram_full = torch.einsum("anm,bnm->nab", full, full)
    gram_iso = torch.einsum("anr,bnr->nab", iso, iso)
    torch.testing.assert_close(gram_iso, gram_full, rtol=1e-10, atol=1e-10)
    # and the mean over positions is over real positions only: row 2 by hand, layer 0 head 1
    _, cache = tiny64.run_with_cache(toks[2:, :3])
    want = cache["blocks.0.attn.hook_z"][0, :3, 1].mean(0) @ tiny64.W_O[0, 1]
    torch.testing.assert_close(full[2, 1], want, rtol=1e-10, atol=1e-10)


def test_last_position_head_vectors_read_each_prompts_last_real_position(tiny64):
    toks = torch.tensor([[1, 5, 7, 9, 2], [3, 3, 8, 0, 0]])
    lengths = torch.tensor([5, 3])
    last = attr.head_vectors(tiny64, toks, lengths, positions="last")
    _, cache = tiny64.run_with_cache(toks[1:, :3])
    want = cache["blocks.1.attn.hook_z"][0, 2, 3] @ tiny64.W_O[1, 3]
    torch.testing.assert_close(last[1, 4 + 3], want, rtol=1e-10, atol=1e-10)  # node = layer 1 × 4 heads + head 3
    with pytest.raises(InputError, match="'mean' or 'last'"):
        attr.head_vectors(tiny64, toks, lengths, positions="first")
