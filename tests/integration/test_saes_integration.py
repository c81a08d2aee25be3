"""Shipped SAEs on the embedded model: evals, splicing, steering, features, absorption."""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration


def _rows(model, name="code", n=6, t=128):
    from probes.datasets import load_texts
    from probes.tokens import encode_batch

    seqs = [s[:t] for s in encode_batch(model, load_texts(name)) if len(s) >= t]
    return np.stack([s.numpy() for s in seqs[:n]])


def test_shipped_sae_evals_on_shipped_text(smollm2):
    """Sanity check on the shipped code texts (CPython stdlib, a source the corpus also
    draws on); the held-out numbers in the manifest come from the corpus' held-out split."""
    from saes.evals import evaluate
    from saes.store import load_sae

    s = evaluate(smollm2.model, load_sae("smollm2-135m/resid-L12"), _rows(smollm2.model), batch_size=6)
    assert s["l0"] == pytest.approx(60.0)
    assert s["explained_variance"] >= 0.85
    assert s["ce_recovered_zero"] >= 0.90
    assert s["ce_clean"] < s["ce_sae"] < s["ce_mean"] < s["ce_zero"]


def test_splice_with_error_term_is_identity_on_the_real_model(smollm2):
    from probes.interventions import applied
    from saes.interventions import SaeSplice

    model = smollm2.model
    toks = torch.as_tensor(_rows(model, n=2, t=32).astype(np.int64))
    with torch.no_grad():
        base = model(toks)
        with applied(model, [SaeSplice("smollm2-135m/resid-L18", error_term=True)]):
            same = model(toks)
    torch.testing.assert_close(same, base, rtol=1e-4, atol=2e-3)


def test_steering_raises_promoted_tokens(smollm2):
    from saes.steering import steer_verification

    r = steer_verification(smollm2.model, sae="smollm2-135m/resid-L18", n=4)
    assert r.fraction_up >= 0.75
    assert r.median_delta > 0


def test_feature_pages_and_search(smollm2):
    from saes.features import latents_for_token, latents_on_text, sae_features
    from saes.interventions import sae_for

    model = smollm2.model
    r = sae_features(model, sae="smollm2-135m/resid-L6", n_texts=6, max_tokens=64)
    assert r.top_values.shape == (4096, 10)
    assert (np.diff(r.top_values, axis=1) <= 0).all()
    lat = int(r.top_values[:, 0].argmax())
    ctx = r.contexts(model, lat)
    assert ctx["activation"].iloc[0] == pytest.approx(float(r.top_values[lat, 0]))
    assert r.hist[lat].sum() == round(r.density[lat] * r.n_tokens)
    sae = sae_for("smollm2-135m/resid-L6", model=model)
    toks, acts, table = latents_on_text(model, sae, "for i in range(10):")
    assert acts.shape == (len(toks), 4096) and len(table) > 0
    hits = latents_for_token(model, sae, " range", top=5)
    assert (np.diff(hits["logit_effect"].to_numpy()) <= 0).all()


def test_absorption_runs_and_reports_rates(smollm2):
    from saes.absorption import absorption

    r = absorption(smollm2.model, saes=("smollm2-135m/resid-L6",), n_words=600)
    assert set(r.table["letter"]) <= set("abcdefghijklmnopqrstuvwxyz")
    rates = r.table["absorption_rate"].dropna()
    assert ((rates >= 0) & (rates <= 1)).all()
    assert r.summary["probe_accuracy"].iloc[0] > 1 / 26 * 5  # far above chance


def test_feature_result_saves_loads_and_reruns(smollm2, tmp_path):
    from analyses.catalog import load_result
    from saes.features import sae_features

    r = sae_features(smollm2.model, sae="smollm2-135m/resid-L0", n_texts=3, max_tokens=32)
    r.save(tmp_path / "f")
    back = load_result(tmp_path / "f")
    assert type(back).__name__ == "SaeFeaturesResult" and back.params == r.params
    np.testing.assert_array_equal(back.top_values, r.top_values)
    np.testing.assert_array_equal(back.hist, r.hist)
    again = back.rerun(smollm2.model)
    np.testing.assert_allclose(again.top_values, r.top_values, rtol=1e-5, atol=1e-5)
