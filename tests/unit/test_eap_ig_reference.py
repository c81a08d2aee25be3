"""EAP-IG against the reference's formula (Hanna et al. 2024; hannamw/EAP-IG
``get_scores_eap_ig``), written out here independently on a tiny float64 model whose gradient
changes along the interpolation path: the input embeddings are set to
``corrupted + k/m·(clean − corrupted)`` for k = 0 … m − 1 while the clean prompts run, the
gradient of the metric w.r.t. each node is averaged over the m points, and the score is that
average times the node's corrupted − clean activation (noising)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechscope.probes import attribution as attr
from mechscope.probes import path_patching as pp

N, T = 4, 6
ANS, DIS = 3, 11


@pytest.fixture
def setup(tiny64):
    rng = np.random.default_rng(7)
    clean = rng.integers(0, 50, size=(N, T))
    corrupt = clean.copy()
    corrupt[:, 1:4] = rng.integers(0, 50, size=(N, 3))  # three tokens changed: a long path
    pairs = attr.make_pairs(tiny64, clean.tolist(), corrupt.tolist(), [[ANS]] * N, [[DIS]] * N)
    return tiny64, torch.tensor(clean), torch.tensor(corrupt), pairs


def metric(logits: torch.Tensor) -> torch.Tensor:
    """Summed logit difference at the last position (all prompts have T tokens)."""
    return (logits[:, -1, ANS] - logits[:, -1, DIS]).sum()


def reference_gradients(model, clean, corrupt, names, m, context=None):
    """Mean over k = 0 … m − 1 of d metric / d activation at ``names``, with the token embeddings
    set to corrupted + k/m (clean − corrupted) and the clean prompts running."""
    with torch.no_grad():
        e_clean, e_corrupt = model.W_E[clean], model.W_E[corrupt]
    total = {n: torch.zeros(()) for n in names}
    for k in range(m):
        point = (e_corrupt + (k / m) * (e_clean - e_corrupt)).detach().requires_grad_(True)
        acts = {}

        def grab(a, hook):
            acts[hook.name] = a
            return a

        hooks = [("hook_embed", lambda e, hook: point)] + [(n, grab) for n in names]
        with model.hooks(fwd_hooks=hooks):
            grads = torch.autograd.grad(metric(model(clean)), [acts[n] for n in names])
        for n, g in zip(names, grads):
            total[n] = total[n] + g
    return {n: g / m for n, g in total.items()}


def test_eap_ig_node_scores_equal_the_reference_formula(setup):
    model, clean, corrupt, pairs = setup
    L, m = model.cfg.n_layers, 5
    z = [f"blocks.{l}.attn.hook_z" for l in range(L)]
    mlp = [f"blocks.{l}.hook_mlp_out" for l in range(L)]
    grads = reference_gradients(model, clean, corrupt, z + mlp, m)
    with torch.no_grad():
        _, cc = model.run_with_cache(clean)
        _, kc = model.run_with_cache(corrupt)
    heads = np.stack([((kc[n] - cc[n]) * grads[n]).sum((0, 1, 3)).numpy() / N for n in z])
    mlps = np.array([float(((kc[n] - cc[n]) * grads[n]).sum()) / N for n in mlp])

    ours = attr.attribution_nodes(model, pairs, "noising", steps=m, batch_size=3)
    scale = np.abs(heads).max()
    assert scale > 1e-3
    np.testing.assert_allclose(ours.heads, heads, rtol=1e-9, atol=1e-12 * scale)
    np.testing.assert_allclose(ours.mlp, mlps, rtol=1e-9, atol=1e-12 * np.abs(mlps).max())

    # the gradient does change along the path here: the end points give other scores
    at_clean = attr.attribution_nodes(model, pairs, "noising", steps=1)  # the gradient at the clean end
    assert np.abs(at_clean.heads - heads).max() > 0.05 * scale


def test_eap_ig_samples_the_reference_points(setup):
    """The embeddings the m gradient runs see are corrupted + k/m (clean − corrupted),
    k = 0 … m − 1 (recorded where they enter the first block); steps = 1: the clean ones."""
    model, clean, corrupt, pairs = setup
    seen = []

    def record(x, hook):
        if torch.is_grad_enabled():
            seen.append(x.detach().clone())
        return x

    with torch.no_grad():
        e_clean, e_corrupt = model.W_E[clean], model.W_E[corrupt]
    model.add_hook("blocks.0.hook_resid_pre", record, is_permanent=True)
    try:
        for m, want in ((4, [0.0, 0.25, 0.5, 0.75]), (1, [1.0])):
            seen.clear()
            attr.attribution_nodes(model, pairs, "noising", steps=m, batch_size=N)
            assert len(seen) == len(want)
            for x, frac in zip(seen, want):
                torch.testing.assert_close(x, e_corrupt + frac * (e_clean - e_corrupt), rtol=1e-12, atol=1e-12)
    finally:
        model.reset_hooks(including_permanent=True)


def test_eap_ig_edge_scores_equal_the_reference_formula(setup):
    """Edges s→r: Σ (corrupted − clean output of s, in d_model) · (mean gradient at r's q, k and
    v inputs over the reference points)."""
    model, clean, corrupt, pairs = setup
    m = 4
    edges = [((0, 1), (1, 2)), ((0, 3), (1, 0)), ((0, 0), (1, 3))]
    names = [f"blocks.1.hook_{k}_input" for k in "qkv"]
    cfg = model.cfg
    cfg.use_split_qkv_input = True
    try:
        grads = reference_gradients(model, clean, corrupt, names, m)
    finally:
        cfg.use_split_qkv_input = False
    with torch.no_grad():
        _, cc = model.run_with_cache(clean)
        _, kc = model.run_with_cache(corrupt)
    want = []
    for (ls, hs), (lr, hr) in edges:
        z = f"blocks.{ls}.attn.hook_z"
        delta = (kc[z][:, :, hs] - cc[z][:, :, hs]) @ model.W_O[ls, hs].detach()
        want.append(float(sum((delta * grads[n][:, :, hr]).sum() for n in names)) / N)
    want = np.array(want)
    ours = pp.attribution_edges(model, pairs, edges, "noising", steps=m, inputs=("qkv",), batch_size=3)
    assert np.abs(want).max() > 1e-3
    np.testing.assert_allclose(ours.effects[0], want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
