"""Isotropy on the embedded SmolLM2: the `isoscore` package agrees on real clouds, the
streamed per-layer scores equal a direct computation on captured states, whitening fitted on
one set and applied to another, contrastive search with α = 0 is greedy, the decoding
comparison's isotropy equals Su & Collier's formula computed directly, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration

from IsoScore import IsoScore as oracle  # the dev extra installs it: a missing oracle fails, never skips

TEXTS = ("The old house stood at the end of the lane, its windows dark and its garden overgrown.",
         "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
         "In the beginning of the year the council met to decide the fate of the bridge over the river.",
         "1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987")


def test_streamed_scores_equal_direct_and_the_oracle_on_real_clouds(smollm2):
    from mechscope.analyses import isotropy as iso
    from mechscope.probes import capture, hooknames

    model = smollm2.model
    res = iso.isotropy(model, texts=TEXTS, n_sample=40, n_pairs=500, heads=False, weights=True)
    L = model.cfg.n_layers
    sites = [hooknames.name("resid_pre", 0), hooknames.name("resid_post", 12), hooknames.name("resid_post", L - 1)]
    acts = capture.run(model, list(TEXTS), capture=sites).activations
    r = res.resid()
    for site, depth in zip(sites, (0, 13, L)):
        cloud = torch.cat(acts[site]).double().numpy()  # ~70 points × 576 dims: fewer points than dimensions
        ref = float(oracle.IsoScore(cloud))
        assert iso.isoscore(cloud) == pytest.approx(ref, abs=1e-6)
        # streamed in float32 products around a shift: equal to the float64 oracle to 1e-6
        assert r.loc[r.depth == depth, "isoscore"].item() == pytest.approx(ref, abs=1e-6)
        c = np.cov(cloud.T)
        c0 = np.trace(c) / c.shape[0] * np.eye(c.shape[0])
        star = float(oracle.IsoScore_star(cloud, c0, 0.2))
        assert r.loc[r.depth == depth, "isoscore_star"].item() == pytest.approx(star, abs=1e-6)
        assert r.loc[r.depth == depth, "self_similarity"].item() == pytest.approx(
            iso.self_similarity([a.double() for a in acts[site]]), abs=1e-5)
    w = res.weights().set_index("cloud")
    assert w.loc["W_E", "isoscore"] == pytest.approx(float(oracle.IsoScore(model.W_E.detach().double().numpy())), abs=1e-6)
    # SmolLM2's last layer is far from isotropic, with a few massive outlier dimensions
    assert r.isoscore.iloc[-1] < 0.2 and r.n_outlier_var.iloc[-1] >= 1


def test_whitening_effect_and_artefacts(smollm2, tmp_path):
    from mechscope.analyses import isotropy as iso
    from mechscope.probes import whitening as wh
    from mechscope.probes.decoding import generate

    model = smollm2.model
    res = iso.whitening_effect(model, depth=10, n_texts=4, max_tokens=32, n_sample=60, n_pairs=500,
                               save_dir=str(tmp_path))
    s = res.scores.set_index(["set", "method"])
    # fitted on ~4×32 points in 576 dims: fewer points than dimensions, so ZCA is the identity only
    # on the span of the fitting points; there every kept eigenvalue is 1 and IsoScore of that
    # span is what is left: more isotropic than the raw cloud by far
    assert s.loc[("fit", "zca"), "isoscore"] > s.loc[("fit", "none"), "isoscore"]
    assert s.loc[("held-out", "zca"), "isoscore"] > s.loc[("held-out", "none"), "isoscore"]
    # the removed dimensions are exactly the fitting cloud's variance outliers
    raw = s.loc[("fit", "none")]
    assert len(res.removed_dims) == raw.n_outlier_var >= 1
    assert set(res.removed_dims) <= {int(v) for v in raw.outlier_dims.split(",")}
    assert s.loc[("fit", "zca"), "cov_distance_to_identity"] < s.loc[("fit", "none"), "cov_distance_to_identity"]
    art = res.artefacts["zca"]
    fit = wh.load(art["path"], art["sha256"])
    assert fit.site == res.site and fit.matrix.shape == (576, 576)
    iv = wh.Whitening(art["path"], art["sha256"], strength=0.0)
    base = generate(model, "The capital of France is", 4).new_tokens
    assert generate(model, "The capital of France is", 4, interventions=[iv]).new_tokens == base  # strength 0


def test_contrastive_on_smollm2(smollm2, monkeypatch):
    import mechscope.probes.decoding as decoding
    from mechscope.analyses.isotropy import decoding_isotropy
    from mechscope.probes.contrastive import Contrastive
    from mechscope.probes.decoding import generate

    model = smollm2.model
    greedy = generate(model, "The capital of France is", 10).new_tokens
    assert generate(model, "The capital of France is", 10, Contrastive(alpha=0.0)).new_tokens == greedy
    runs = []  # (prompt, generated ids) of every generation the comparison makes

    def spy(model, prompt, *args, **kwargs):
        out = generate(model, prompt, *args, **kwargs)
        runs.append((list(prompt), list(out.new_tokens)))
        return out

    monkeypatch.setattr(decoding, "generate", spy)
    res = decoding_isotropy(model, n_texts=1, max_new_tokens=24)
    summ = res.summary().set_index("strategy")
    assert len(summ) == 3 and len(res.table) == 3 == len(runs)
    # Su & Collier's isotropy of each generation, computed directly: the generated tokens' last-layer
    # states through the final RMS norm (by hand, float64), 1 − the mean cosine over the pairs i ≠ j
    site = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    for row, (prompt, new) in zip(res.table.itertuples(), runs):
        assert row.n_tokens == len(new) == 24 and len(prompt) == 32
        with torch.no_grad():
            _, cache = model.run_with_cache(torch.tensor([prompt + new]), names_filter=[site])
            x = cache[site][0, len(prompt):].double()
            h = x / (x.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt() * model.ln_final.w.double()
        cos = [float(torch.nn.functional.cosine_similarity(h[i], h[j], dim=0)) for i in range(24) for j in range(24)
               if i != j]
        assert row.isotropy == pytest.approx(1 - np.mean(cos), abs=1e-6)
    # greedy repeats itself at least as much as contrastive search on this prefix (Su et al.'s point)
    assert summ.filter(like="contrastive", axis=0)["rep_2"].item() <= summ.loc["greedy", "rep_2"]


def _reference_scores(hf, ids: list[int], alpha: float, k: int):
    """One step of Su et al.'s contrastive search computed by the Hugging Face model, the way
    their reference (SimCTG, and transformers' contrastive search) does it: the top-k of the
    full softmax, each candidate's last-layer state (after the final norm) against every
    context state, (1 − α)·p − α·max cos. Returns (candidate ids, scores)."""
    ctx = torch.tensor([ids])
    with torch.no_grad():
        h_ctx = hf.model(ctx).last_hidden_state[0]
        top_p, top_ids = hf.lm_head(h_ctx[-1]).softmax(-1).topk(k)
        cand = torch.cat([ctx.expand(k, -1), top_ids[:, None]], 1)
        h = hf.model(cand).last_hidden_state[:, -1]
    cos = torch.nn.functional.normalize(h, dim=-1) @ torch.nn.functional.normalize(h_ctx, dim=-1).T
    return top_ids.tolist(), ((1 - alpha) * top_p - alpha * cos.max(1).values).tolist()


def test_contrastive_matches_the_reference_algorithm_on_hf(smollm2, hf_smollm2, monkeypatch):
    """Our KV-cached search (the shared-row candidate pass) against the reference algorithm run
    by Hugging Face's model, step by step along our tokens: at every step our token is the
    reference's best candidate (float32 states of two implementations: a near-tie within
    2e-3 of the best score would be allowed, and is counted)."""
    import mechscope.probes.contrastive as pc
    from mechscope.probes.decoding import generate
    from mechscope.probes.tokens import encode

    model = smollm2.model
    calls = []
    real = pc._score_shared
    monkeypatch.setattr(pc, "_score_shared", lambda *a: calls.append(1) or real(*a))
    prompt = [int(t) for t in encode(model, TEXTS[0] + " " + TEXTS[2])]
    ours = generate(model, prompt, 12, pc.Contrastive(0.6, 4), stop_at_eos=False).new_tokens
    assert len(calls) == 12  # every step took the shared-row pass
    exact = 0
    for i, tok in enumerate(ours):
        ids, scores = _reference_scores(hf_smollm2, prompt + list(ours[:i]), 0.6, 4)
        assert tok in ids, f"step {i}: {tok} is not among the reference's top-4 {ids}"
        assert scores[ids.index(tok)] >= max(scores) - 2e-3, f"step {i}: {scores}"
        exact += tok == ids[int(np.argmax(scores))]
    assert exact >= len(ours) - 1


def test_cli_isotropy(smollm2, tmp_path, capsys):
    from mechscope.app.cli import main

    out = tmp_path / "iso"
    assert main(["isotropy", "--n-texts", "3", "--max-tokens", "16", "--n-sample", "20", "--no-heads",
                 "--no-weights", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "depth" in text and (out / "result.json").is_file() and (out / "curves.html").is_file()
    assert main(["isotropy", "--zeta", "2"]) == 2
    assert "ζ" in capsys.readouterr().err
    assert main(["isotropy", "--sanity"]) == 0
    assert "one dimension" in capsys.readouterr().out
