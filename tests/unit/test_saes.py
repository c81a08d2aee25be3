"""SAEs: planted recovery, eval metrics on hand-built data, sha256/pickle refusal,
interventions (splice with error term, steering 0, clamp), bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from mechscope.probes.errors import ChecksumError, InputError
from mechscope.probes.interventions import SteeringVector, applied, from_dict
from mechscope.saes import store
from mechscope.saes.evals import EvalStats, density_histogram, recovered
from mechscope.saes.interventions import SaeClamp, SaeSplice, SaeSteer, decoder_directions
from tests.tiny import tiny_model


def _topk_sae(d_in: int, d_sae: int, k: int, hook: str, dtype: str = "float32", seed: int = 0,
              rescale: bool = True):
    """A SAE-Lens TopK SAE; ``rescale`` as the shipped ones (activations × decoder norm)."""
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    cfg = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, dtype=dtype, device="cpu", rescale_acts_by_decoder_norm=rescale)
    cfg.metadata.hook_name = hook
    return TopKSAE(cfg)


def _save(sae, path):
    sae.save_model(str(path / "raw"))
    store.export_dir(path / "raw", path / "sae", dtype=torch.float32)
    return path / "sae"


@pytest.fixture
def tiny_sae(tmp_path):
    """A random TopK SAE at blocks.0.hook_resid_post of the tiny model, saved with checksums."""
    sae = _topk_sae(32, 48, 4, "blocks.0.hook_resid_post")
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, 48)[:, None])  # decoder rows of unequal norms
    return str(_save(sae, tmp_path))


def test_planted_sae_recovers_activations_exactly():
    """Latents = 12 orthonormal directions in 32 dims; x = b_dec + a sum of exactly k = 3 of them."""
    sae = _topk_sae(32, 12, 3, "blocks.0.hook_resid_post", dtype="float64", rescale=False)
    q, _ = torch.linalg.qr(torch.randn(32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    dirs = q[:, :12].T.contiguous()  # [12, 32] orthonormal rows
    b_dec = torch.linspace(-1, 1, 32, dtype=torch.float64)
    with torch.no_grad():
        sae.W_dec.copy_(dirs)
        sae.W_enc.copy_(dirs.T)
        sae.b_enc.zero_()
        sae.b_dec.copy_(b_dec)
    g = torch.Generator().manual_seed(2)
    codes = torch.zeros(200, 12, dtype=torch.float64)
    for row in codes:
        idx = torch.randperm(12, generator=g)[:3]
        row[idx] = torch.rand(len(idx), generator=g, dtype=torch.float64) + 0.5
    x = codes @ dirs + b_dec
    with torch.no_grad():
        feats = sae.encode(x)
    torch.testing.assert_close(feats, codes, rtol=0, atol=1e-12)
    torch.testing.assert_close(sae.decode(feats), x, rtol=0, atol=1e-12)
    stats = EvalStats(12)
    stats.add_recon(x, sae.decode(feats), feats)
    s = stats.summary()
    assert s["explained_variance"] == pytest.approx(1.0, abs=1e-12)
    assert s["l0"] == pytest.approx(3.0)


def test_eval_metrics_on_hand_built_reconstructions():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    x_hat = torch.tensor([[1.0, 1.0], [3.0, 0.0]])
    acts = torch.tensor([[0.0, 2.0, 0.0, 0.0], [0.0, 1.0, 5.0, 0.0]])
    stats = EvalStats(4)
    stats.add_recon(x, x_hat, acts)
    s = stats.summary()
    # mean (2, 0); variance = (1 + 1) / 2 = 1; mse = 1 / 2  ->  EV = 1 - 0.5 / 1
    assert s["explained_variance"] == pytest.approx(0.5)
    assert s["mse"] == pytest.approx(0.5)
    assert s["l0"] == pytest.approx(1.5)
    assert s["dead_fraction"] == pytest.approx(0.5)  # latents 0 and 3
    assert s["dense_fraction"] == pytest.approx(0.5)  # latent 1 fires on 100 %, latent 2 on 50 %
    np.testing.assert_allclose(s["density"], [0.0, 1.0, 0.5, 0.0])
    assert recovered(clean=2.0, spliced=3.0, ablated=6.0) == pytest.approx(0.75)
    stats.add_ce({"clean": torch.tensor([2.0, 2.0]), "sae": torch.tensor([3.0, 3.0]),
                  "zero": torch.tensor([6.0, 6.0]), "mean": torch.tensor([4.0, 4.0])})
    s = stats.summary()
    assert s["ce_recovered"] == pytest.approx(0.75)
    assert s["ce_recovered_mean"] == pytest.approx(0.5)
    counts, edges = density_histogram(np.array([0.0, 1e-3, 1e-3, 0.5]), bins=7)
    assert counts.sum() == 3 and counts[4] == 2  # log10 = -3 falls in the bin [-3, -2)


def test_explained_variance_by_both_formulas_on_a_hand_built_cloud():
    """x = (3, 1, 0, 0), (1, 3, 0, 0); residuals (0, 0, 1, 0), (0, 0, 0, 1): E|x - x̂|² = 1.
    SAE-Lens: variance = E|x|² - |E x|² = 10 - 8 = 2, EV = 1 - 1/2.
    SAEBench: E|x|² - (E|x|²/d)² = 10 - 2.5² = 3.75, EV = 1 - 1/3.75 = 11/15."""
    x = torch.tensor([[3.0, 1.0, 0.0, 0.0], [1.0, 3.0, 0.0, 0.0]], dtype=torch.float64)
    x_hat = x - torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    stats = EvalStats(3)
    stats.add_recon(x[:1], x_hat[:1], torch.ones(1, 3))  # streamed in two batches
    stats.add_recon(x[1:], x_hat[1:], torch.ones(1, 3))
    s = stats.summary()
    assert s["mse"] == 1.0
    assert s["explained_variance"] == pytest.approx(0.5, abs=1e-15)
    assert s["explained_variance_saebench"] == pytest.approx(11 / 15, abs=1e-15)


def test_explained_variance_matches_sae_lens_and_saebench_references():
    """Same inputs through SAE-Lens' ExplainedVarianceCalculator (the reference algorithm) and
    through SAEBench core's aggregation, transcribed here (per-batch means of |x|², of x² per
    dimension and of |x - x̂|², then ``1 - resid / (mean_sq - mean(x²_d)²)``)."""
    from sae_lens.evals import ExplainedVarianceCalculator

    g = torch.Generator().manual_seed(3)
    ref, ours = ExplainedVarianceCalculator(), EvalStats(8)
    mean_sq, mean_sq_dim, mean_resid = [], [], []
    for _ in range(3):
        x = (torch.randn(50, 64, generator=g) + 0.5).double()
        x_hat = x + 0.7 * torch.randn(50, 64, generator=g).double()
        ref.add_batch(sae_output=x_hat, hidden_acts=x)
        ours.add_recon(x, x_hat, torch.ones(50, 8))
        mean_sq.append(x.pow(2).sum(-1).mean(0))
        mean_sq_dim.append(x.pow(2).mean(0))
        mean_resid.append((x - x_hat).pow(2).sum(-1).mean(0))
    saebench = 1 - torch.stack(mean_resid).mean() / (torch.stack(mean_sq).mean() - torch.cat(mean_sq_dim).mean() ** 2)
    s = ours.summary()
    assert s["explained_variance"] == pytest.approx(ref.compute(), rel=1e-9)
    assert s["explained_variance_saebench"] == pytest.approx(float(saebench), rel=1e-12)
    assert s["explained_variance_saebench"] > s["explained_variance"] + 0.05  # the mean (0.5 per dim) is not removed


def test_splice_with_error_term_leaves_logits_unchanged(tiny_sae):
    model = tiny_model(d_model=32, n_heads=4, d_head=8)
    toks = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(toks)
        with applied(model, [SaeSplice(tiny_sae, error_term=True)]):
            same = model(toks)
        with applied(model, [SaeSplice(tiny_sae, error_term=False)]):
            changed = model(toks)
    torch.testing.assert_close(same, base, rtol=1e-5, atol=1e-5)
    assert (changed[:, 1:] - base[:, 1:]).abs().max() > 1e-3
    torch.testing.assert_close(changed[:, 0], base[:, 0])  # position 0 left alone


def test_steering_zero_is_a_no_op_and_matches_a_steering_vector(tiny_sae):
    model = tiny_model(d_model=32, n_heads=4, d_head=8)
    toks = torch.randint(0, 50, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model(toks)
        with applied(model, [SaeSteer(tiny_sae, latent=5, value=0.0)]):
            zero = model(toks)
        assert torch.equal(zero, base)
        sae = store.load_sae(tiny_sae)
        vec = decoder_directions(sae, [5])[0]
        # for a TopK SAE that rescales by the decoder norm, the direction is W_dec[5] / |W_dec[5]|
        torch.testing.assert_close(vec, sae.W_dec[5] / sae.W_dec[5].norm(), rtol=1e-5, atol=1e-6)
        with applied(model, [SaeSteer(tiny_sae, latent=5, value=3.0, skip_first=False)]):
            steered = model(toks)
        with applied(model, [SteeringVector.from_tensor(0, vec, scale=3.0)]):
            reference = model(toks)
        torch.testing.assert_close(steered, reference, rtol=1e-5, atol=1e-5)
        with applied(model, [SaeSteer(tiny_sae, latent=5, value=3.0, positions=(4,))]):
            at4 = model(toks)
    torch.testing.assert_close(at4[:, :4], base[:, :4])  # causal: earlier positions untouched
    assert (at4[:, 4:] - base[:, 4:]).abs().max() > 1e-3


def test_clamp_changes_only_the_latent(tiny_sae):
    """Clamping latent i to v moves the hook activation by (v - a_i) × direction_i exactly."""
    model = tiny_model(d_model=32, n_heads=4, d_head=8, dtype=torch.float32)
    toks = torch.randint(0, 50, (1, 6), generator=torch.Generator().manual_seed(2))
    sae = store.load_sae(tiny_sae)
    hook = "blocks.0.hook_resid_post"
    seen = {}

    def grab(act, hook):  # noqa: ARG001
        seen.setdefault("x", []).append(act.detach().clone())

    with torch.no_grad():
        with applied(model, extra_hooks=[(hook, grab)]):
            model(toks)
        x = seen.pop("x")[0]
        a = sae.encode(x[0, 1:])[:, 7]
        with applied(model, [SaeClamp(tiny_sae, latent=7, value=2.5)], extra_hooks=[(hook, grab)]):
            model(toks)
    clamped = seen["x"][0]
    expect = x.clone()
    expect[0, 1:] += (2.5 - a)[:, None] * (sae.W_dec[7] / sae.W_dec[7].norm())
    torch.testing.assert_close(clamped, expect, rtol=1e-5, atol=1e-5)


def test_interventions_round_trip_as_data(tiny_sae):
    for iv in (SaeSteer(tiny_sae, 3, 2.0, positions=(1, 2)), SaeClamp(tiny_sae, 3, 0.0), SaeSplice(tiny_sae, True)):
        d = iv.to_dict()
        json.dumps(d)
        assert from_dict(d) == iv


def test_loading_refuses_wrong_sha256_and_pickles(tiny_sae, tmp_path):
    store.load_sae(tiny_sae)  # fine as written
    bad = tmp_path / "bad"
    shutil.copytree(tiny_sae, bad)
    w = bad / store.WEIGHTS
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="sha256"):
        store.load_sae(str(bad))
    pk = tmp_path / "pk"
    shutil.copytree(tiny_sae, pk)
    torch.save({"W_dec": torch.zeros(2)}, pk / "sae_weights.pt")
    with pytest.raises(InputError, match="pickle"):
        store.load_sae(str(pk))
    with pytest.raises(InputError, match="pickle"):
        store.load_sae(str(pk / "sae_weights.pt"))
    with pytest.raises(InputError, match="sha256"):
        SaeSteer(tiny_sae, 1, 1.0, sha256="0" * 64).validate(tiny_model(d_model=32, n_heads=4, d_head=8))


def test_bad_input_messages(tiny_sae):
    model = tiny_model(d_model=32, n_heads=4, d_head=8)
    with pytest.raises(InputError, match="Unknown SAE"):
        store.load_sae("no-such-sae")
    with pytest.raises(InputError, match="layers 0, 6, 12, 18, 24, 29"):
        store.shipped_for_layer(3)
    with pytest.raises(InputError, match="No shipped SAE"):
        store.load_sae("smollm2-135m/resid-L3")
    with pytest.raises(InputError, match="latent 48 is out of range"):
        SaeSteer(tiny_sae, latent=48, value=1.0).validate(model)
    with pytest.raises(InputError, match="does not match the model's d_model"):
        SaeSplice("smollm2-135m/resid-L0").validate(model)
    with pytest.raises(InputError, match="architecture"):
        from mechscope.saes.train import TrainSpec

        TrainSpec(architecture="relu").validate()


def test_shipped_saes_are_checked():
    """Names, total size and shapes; their eval targets are recomputed on real text by
    tests/integration/test_saes_integration.py."""
    names = store.shipped_names()
    assert names == [f"smollm2-135m/resid-L{l}" for l in (0, 6, 12, 18, 24, 29)]
    total = sum((store.WEIGHTS_DIR / store.manifest()["saes"][n]["path"] / store.WEIGHTS).stat().st_size for n in names)
    assert total <= 60e6
    sae = store.load_sae("smollm2-135m/resid-L12")
    assert sae.cfg.d_in == 576 and sae.cfg.d_sae == 4096 and sae.cfg.metadata.hook_name == "blocks.12.hook_resid_post"
    assert sae.W_dec.dtype == torch.float32


def test_train_on_activations_learns_planted_dictionary():
    from mechscope.saes.train import train_on_activations

    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=-1)
    codes = (torch.rand(4000, 8, generator=g) < 0.2).float() * (torch.rand(4000, 8, generator=g) + 1)
    acts = codes @ dirs
    sae = train_on_activations(acts, architecture="topk", d_sae=16, k=3, training_tokens=60_000,
                               batch_size=256, lr=3e-3)
    x_hat = sae.decode(sae.encode(acts))
    ev = 1 - (acts - x_hat).pow(2).sum() / (acts - acts.mean(0)).pow(2).sum()
    assert ev > 0.8
    with pytest.raises(InputError, match="acts"):
        train_on_activations(torch.zeros(5))


def _sae_lens_reference(model, sae, toks, ignore_tokens=None):
    """SAE-Lens' get_recons_loss on one batch, masked as its get_downstream_reconstruction_metrics does."""
    from sae_lens.evals import get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    with torch.no_grad():
        ref = get_recons_loss(sae, model, ActivationScaler(), toks, compute_kl=False, compute_ce_loss=True,
                              ignore_tokens=ignore_tokens)
    keep = torch.ones_like(toks, dtype=torch.bool)
    for t in ignore_tokens or []:
        keep &= toks != t
    out = {k: float(v[keep[:, :-1]].mean()) for k, v in ref.items()}
    out["ce_loss_score"] = (out["ce_loss_with_ablation"] - out["ce_loss_with_sae"]) / (
        out["ce_loss_with_ablation"] - out["ce_loss_without_sae"])
    return out


@pytest.mark.parametrize("ignore", [None, (7,)])
def test_reference_protocol_matches_sae_lens_get_recons_loss(tiny_sae, ignore):
    """The default numbers (every position spliced and zero-ablated; special-token positions
    kept and unscored) equal SAE-Lens' ``evals.get_recons_loss`` and its explained variance."""
    from sae_lens.evals import ExplainedVarianceCalculator

    from mechscope.saes.evals import evaluate

    model = tiny_model(d_model=32, n_heads=4, d_head=8)
    sae = store.load_sae(tiny_sae)
    toks = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(5))
    toks[:, 0] = 7
    toks[1, 5] = 7
    ref = _sae_lens_reference(model, sae, toks, list(ignore) if ignore else None)
    ours = evaluate(model, sae, toks, batch_size=4, ignore_tokens=ignore or ())
    assert ours["ce_clean"] == pytest.approx(ref["ce_loss_without_sae"], rel=1e-5)
    assert ours["ce_sae"] == pytest.approx(ref["ce_loss_with_sae"], rel=1e-5)
    assert ours["ce_zero"] == pytest.approx(ref["ce_loss_with_ablation"], rel=1e-5)
    assert ours["ce_recovered"] == pytest.approx(ref["ce_loss_score"], rel=1e-4)
    _, cache = model.run_with_cache(toks, names_filter="blocks.0.hook_resid_post")
    x = cache["blocks.0.hook_resid_post"]
    keep = toks != 7 if ignore else torch.ones_like(toks, dtype=torch.bool)
    ev = ExplainedVarianceCalculator()
    with torch.no_grad():
        ev.add_batch(sae_output=sae.decode(sae.encode(x[keep])), hidden_acts=x[keep])
    assert ours["explained_variance"] == pytest.approx(ev.compute(), rel=1e-6)
    assert ours["tokens"] == int(keep.sum())


def test_ce_recovered_both_protocols_by_direct_computation(tiny_sae):
    """CE recovered on a tiny model, recomputed here with plain TransformerLens hooks: the
    reference protocol over every position, ours (``_skip0``) leaving position 0 alone, with
    zero and mean ablation."""
    from mechscope.saes.evals import evaluate

    model = tiny_model(d_model=32, n_heads=4, d_head=8)
    sae = store.load_sae(tiny_sae)
    hook = "blocks.0.hook_resid_post"
    toks = torch.randint(0, 50, (6, 10), generator=torch.Generator().manual_seed(9))
    ours = evaluate(model, sae, toks, batch_size=4, mean_rows=6)

    def ce(fn=None, start=0):
        with torch.no_grad():
            logits = model.run_with_hooks(toks, fwd_hooks=[(hook, fn)] if fn else [])
        lp = logits[:, start:-1].double().log_softmax(-1)
        return float(-lp.gather(-1, toks[:, start + 1 :, None]).mean())

    def recon(a):
        return sae.decode(sae.encode(a))

    def from1(value):
        def fn(act, hook):  # noqa: ARG001
            out = act.clone()
            out[:, 1:] = value(act[:, 1:])
            return out
        return fn

    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=hook)
    mu = cache[hook][:, 1:].reshape(-1, 32).double().mean(0).float()
    clean, sae_all, zero_all = ce(), ce(lambda a, hook: recon(a)), ce(lambda a, hook: torch.zeros_like(a))
    clean1 = ce(start=1)
    sae1, zero1 = ce(from1(recon), 1), ce(from1(torch.zeros_like), 1)
    mean1 = ce(from1(lambda a: mu.expand_as(a)), 1)
    assert ours["ce_recovered"] == pytest.approx((zero_all - sae_all) / (zero_all - clean), rel=1e-4)
    assert ours["ce_recovered_skip0"] == pytest.approx((zero1 - sae1) / (zero1 - clean1), rel=1e-4)
    assert ours["ce_recovered_mean_skip0"] == pytest.approx((mean1 - sae1) / (mean1 - clean1), rel=1e-4)
    assert ours["ce_sae"] == pytest.approx(sae_all, rel=1e-5) and ours["ce_sae_skip0"] == pytest.approx(sae1, rel=1e-5)
    assert ours["tokens"] == 60 and ours["tokens_skip0"] == 54
    assert abs(ours["ce_sae"] - ours["ce_sae_skip0"]) > 1e-3  # the two protocols differ here


def test_sae_lens_release_without_hub_gives_one_clear_message():
    from mechscope.probes.errors import ModelNotAvailableError

    with pytest.raises(ModelNotAvailableError, match="cannot reach the hub"):
        store.load_sae("sae-lens:gpt2-small-res-jb/blocks.0.hook_resid_pre")
    with pytest.raises(InputError, match="Unknown SAE-Lens release"):
        store.load_sae("sae-lens:no-such-release/x")
    with pytest.raises(InputError, match="has no SAE"):
        store.load_sae("sae-lens:gpt2-small-res-jb/no-such-id")


def test_cli_sae_list_and_cpu_train_estimate(capsys, tmp_path):
    from mechscope.app.cli import main

    assert main(["sae", "list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m/resid-L29" in out and "blocks.29.hook_resid_post" in out
    assert main(["sae", "train", "--device", "cpu", "--out", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert "6 SAEs × 30,000,000 tokens on cpu: about" in out and "--yes" in out
    assert not (tmp_path / "t").exists()


def test_sae_commands_take_model_device_and_never_overwrite_a_folder(tmp_path, capsys):
    """`mechscope sae eval|features|absorption` are built from their Params (defaults in one place),
    honour --model/--device, and refuse --out over a user's folder before any work."""
    from mechscope.app.cli import build_parser, main
    from mechscope.saes.absorption import AbsorptionParams
    from mechscope.saes.evals import SaeEvalParams

    parser = build_parser()
    a = parser.parse_args(["sae", "absorption", "--device", "cuda:1", "--model", "m", "--min-letters", "12"])
    assert (a.device, a.model, a.min_letters, a.method) == ("cuda:1", "m", 12, AbsorptionParams.method)
    e = parser.parse_args(["sae", "eval"])
    assert (e.n_texts, e.batch_size) == (SaeEvalParams.n_texts, SaeEvalParams.batch_size)
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter.tex").write_text("mine")
    for cmd in (["sae", "eval"], ["sae", "features"], ["sae", "absorption"]):
        assert main([*cmd, "--model", "no-such-model", "--out", str(thesis)]) == 2
        assert "holds no saved result" in capsys.readouterr().err
    assert [p.name for p in thesis.iterdir()] == ["chapter.tex"] and (thesis / "chapter.tex").read_text() == "mine"


def test_one_loader_pins_checks_fit_and_caches(tiny_sae):
    """``load_sae`` is the one loader: a pinned digest, the fit to a model, one cached copy."""
    import hashlib
    from pathlib import Path

    digest = hashlib.sha256((Path(tiny_sae) / store.WEIGHTS).read_bytes()).hexdigest()
    model = tiny_model(d_model=32, n_heads=4, d_head=8)
    a = store.load_sae(tiny_sae, model=model, sha256=digest, cached=True)
    assert store.load_sae(tiny_sae, cached=True) is a
    assert store.load_sae(tiny_sae) is not a  # uncached: a fresh copy, same weights
    assert torch.equal(store.load_sae(tiny_sae).W_dec, a.W_dec)
    with pytest.raises(InputError, match="sha256"):
        store.load_sae(tiny_sae, sha256="0" * 64)
    with pytest.raises(InputError, match="d_model"):
        store.load_sae(tiny_sae, model=tiny_model(d_model=16, n_heads=2, d_head=8))
