"""The discrete-SAE method's default is the reference's (O'Neill & Bui 2024;
charlieoneill11/sae-circuits): one SAE shared by all heads, trained on the heads' d_model
outputs; its "edge AUC" turns the top head pairs into node predictions."""

from __future__ import annotations

import math

import numpy as np
import torch

from mechscope.analyses.circuits import CircuitCompareParams, CircuitDiscoverParams, sae_codes
from mechscope.probes import attribution as attr
from mechscope.saes import discrete


def test_default_trains_one_sae_shared_by_all_heads_on_d_model_vectors(tiny64, monkeypatch):
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 50, size=(6, 5))
    corrupt = clean.copy()
    corrupt[:, 2] = rng.integers(0, 50, size=6)
    pairs = attr.make_pairs(tiny64, clean.tolist(), corrupt.tolist(), [[1]] * 6, [[2]] * 6)
    seen = {}
    real = discrete.train_head_saes

    def spy(x, *a, **kw):
        seen["x"] = x
        seen["sae"] = real(x, *a, **kw)
        return seen["sae"]

    monkeypatch.setattr(discrete, "train_head_saes", spy)
    p = CircuitDiscoverParams(n_latents=8, epochs=5)
    codes_pos, codes_neg = sae_codes(tiny64, pairs, p)
    L, H, d = tiny64.cfg.n_layers, tiny64.cfg.n_heads, tiny64.cfg.d_model
    assert seen["x"].shape == (12, L * H, d)  # every head's d_model output, positive + negative prompts
    assert seen["sae"].W_enc.shape == (1, 8, d) and seen["sae"].W_dec.shape == (1, d, 8)  # ONE SAE
    assert codes_pos.shape == codes_neg.shape == (6, L * H)
    # the reference's settings are the defaults of both analyses
    for params in (CircuitDiscoverParams(), CircuitCompareParams()):
        assert (params.shared, params.n_latents, params.l1, params.epochs, params.n_train) == (True, 200, 0.02, 500, 10)
    assert CircuitDiscoverParams().lr == 1e-3 and CircuitDiscoverParams().positions == "mean"


class _UnitNormLinear(torch.nn.Module):
    """The reference's constrained linear layer, written out: rows re-normalised before every
    forward; a gradient hook removes each row's component along the row."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = torch.nn.Parameter(weight.clone())
        self.bias = None if bias is None else torch.nn.Parameter(bias.clone())
        self.weight.register_hook(self._project)

    def _project(self, grad):
        w = self.weight / self.weight.norm(dim=-1, keepdim=True)
        return grad - (grad * self.weight).sum(-1, keepdim=True) * w

    def forward(self, x):
        with torch.no_grad():
            self.weight.div_(self.weight.norm(dim=-1, keepdim=True))
        return torch.nn.functional.linear(x, self.weight, self.bias)


def test_shared_sae_training_follows_the_reference_module():
    """Same initial weights, same 10 training prompts: our shared SAE's weights after training
    equal those of a module built like the reference's SparseAutoencoder (tied bias, unit-norm
    encoder [m, d] and decoder [d, m], loss = MSE + λ · mean over vectors of the L1 norm, Adam)."""
    g0 = torch.Generator().manual_seed(3)
    N, n_heads, d, m, lam, epochs, seed = 16, 5, 6, 12, 0.02, 60, 4
    x = torch.randn(N, n_heads, d, generator=g0) * 2 + torch.randn(1, n_heads, d, generator=g0)
    ours = discrete.train_head_saes(x, n_latents=m, l1=lam, epochs=epochs, lr=1e-3, seed=seed, n_train=10)

    # the initial draws of train_head_saes (its documented seed use): training rows, then W_enc, W_dec, b_enc
    g = torch.Generator().manual_seed(seed)
    train = x[torch.randperm(N, generator=g)[:10]]
    w_enc = torch.randn(1, m, d, generator=g)[0]
    w_dec = torch.randn(1, d, m, generator=g)[0]
    b_enc = ((torch.rand(1, m, generator=g) * 2 - 1) / math.sqrt(d))[0]
    tied = torch.nn.Parameter(torch.zeros(d))
    enc = _UnitNormLinear(w_enc, b_enc)
    dec = _UnitNormLinear(w_dec, None)
    opt = torch.optim.Adam([tied, *enc.parameters(), *dec.parameters()], lr=1e-3)
    for _ in range(epochs):
        opt.zero_grad()
        lat = torch.relu(enc(train - tied))
        rec = dec(lat) + tied
        loss = torch.nn.functional.mse_loss(rec, train) + lam * lat.reshape(-1, m).norm(p=1, dim=1).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        for w in (enc.weight, dec.weight):
            w.div_(w.norm(dim=-1, keepdim=True))
    # float32, entries of order 1: a few ulp (1.2e-7) of rounding between the two programs
    tol = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.W_enc[0], enc.weight.detach(), **tol)
    torch.testing.assert_close(ours.W_dec[0], dec.weight.detach(), **tol)
    torch.testing.assert_close(ours.b_enc[0], enc.bias.detach(), **tol)
    torch.testing.assert_close(ours.b_pre[0], tied.detach(), **tol)
    assert (enc.weight.detach() - w_enc / w_enc.norm(dim=-1, keepdim=True)).abs().max() > 1e-3  # it did train


def test_top_head_pairs_as_node_predictions_by_hand():
    # 5 heads; unique co-occurrence counts (symmetric): (0,1) 5, (1,2) 4, (0,3) 3, all else 0.
    # The reference lists the pairs by count, largest first — (0,1) (1,0) (1,2) (2,1) (0,3) (3,0) —
    # writes out their heads and keeps the first 5² // 2 = 12 entries, i.e. exactly these 6 pairs:
    # head 0 occurs 4 times, head 1 4, head 2 2, head 3 2, head 4 never.
    e = np.zeros((5, 5), dtype=np.int64)
    for (a, b), c in {(0, 1): 5, (1, 2): 4, (0, 3): 3}.items():
        e[a, b] = e[b, a] = c
    np.testing.assert_array_equal(discrete.pair_node_counts(e), [4, 4, 2, 2, 0])
    # k = 4 entries: the pairs (0,1), (1,0) only
    np.testing.assert_array_equal(discrete.pair_node_counts(e, k=4), [2, 2, 0, 0, 0])


def test_compare_table_reports_the_reference_edge_auc_as_a_node_auc_and_labels_the_anchors():
    import pandas as pd

    from mechscope.analyses.circuits import ANCHORS, CircuitCompareResult

    # 2 layers × 2 heads; ground truth at 0.1: heads 0 (L0H0) and 2 (L1H0)
    truth = np.array([[0.5, 0.0], [0.3, 0.0]])
    counts = np.zeros((4, 4), dtype=np.int64)
    counts[0, 2] = counts[2, 0] = 3
    counts[0, 1] = counts[1, 0] = 1
    # top 4² // 2 = 8 entries: (0,2) (2,0) (0,1) (1,0) → head counts [4, 2, 2, 0]; positives {4, 2},
    # negatives {2, 0}: of the 4 (positive, negative) pairs 3 won and 1 tied → AUC 3.5 / 4
    p = CircuitCompareParams(task="docstring", thresholds=(0.1,), edge_top_n=0)
    methods = ("patching", "discrete_sae")
    res = CircuitCompareResult(model_id="toy", params=p, methods=methods, scores=np.stack([np.abs(truth), np.zeros((2, 2))]),
                               truth=truth, mlp=np.zeros(2), edge_counts=counts, top_codes=("",) * 4, seconds={}, passes={},
                               faithfulness=pd.DataFrame(), check={}, n_used=3)
    np.testing.assert_array_equal(res.pair_node_scores(), [[4, 2], [2, 0]])
    tab = res.auc_table(anchors=True)
    ours = tab[tab.method == "discrete_sae"]
    assert ours.pair_node_auc.item() == 3.5 / 4
    assert np.isnan(tab[tab.method == "patching"].pair_node_auc.item())  # only the SAE has all head pairs
    theirs = tab[tab.method.str.endswith("— theirs")].set_index("method")
    # docstring: both papers ran it on attn-only-4l; O'Neill & Bui's "edge AUC" sits in pair_node_auc
    assert theirs.loc["discrete_sae (O'Neill & Bui), attn-only-4l — theirs", "pair_node_auc"] == 0.896
    assert np.isnan(theirs.loc["discrete_sae (O'Neill & Bui), attn-only-4l — theirs", "edge_auc"])
    assert theirs.loc["ACDC (Conmy et al.), attn-only-4l — theirs", "edge_auc"] == 0.982
    assert {a["model"] for a in ANCHORS if a["task"] != "docstring"} == {"GPT-2 small"}
