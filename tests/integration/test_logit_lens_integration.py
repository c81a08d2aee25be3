"""Logit lens and LLM-Microscope metrics on the embedded model."""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration

PROMPT = "The capital of France is"


def test_paris_and_the_layer_it_appears(smollm2):
    from analyses.logit_lens import logit_lens
    from probes.capture import run

    model = smollm2.model
    res = logit_lens(model, PROMPT, target=" Paris")
    last = len(res.tokens) - 1
    out = run(model, [PROMPT], return_logits=True)
    final_top = int(out.logits[0][-1].argmax())
    assert model.tokenizer.decode([final_top]) == " Paris"
    # the lens's last layer is the model's own distribution
    assert int(res.top_ids[-1, last, 0]) == final_top
    assert torch.allclose(res.top_probs[-1, last, 0], torch.softmax(out.logits[0][-1], -1).max(), atol=1e-6)
    assert int(res.target_rank[-1, last]) == 1
    first = res.first_top1_layer[last]
    assert 0 <= first < model.cfg.n_layers
    assert res.top_tokens[first, last, 0] == " Paris"
    assert all(res.top_tokens[layer, last, 0] != " Paris" for layer in range(first))
    assert all(int(res.target_rank[layer, last]) > 1 for layer in range(first))


def test_microscope_metrics_on_real_text(smollm2):
    from analyses.microscope import microscope, twonn_dimension
    from probes.capture import run
    from probes.readout import final_norm

    model = smollm2.model
    res = microscope(model, texts="mixed", max_tokens=800, max_tokens_per_text=100, id_points=800)
    L = model.cfg.n_layers
    # reference rows (embed, after blocks 0..L-2, final normed) + the labelled pre-norm extra row
    assert len(res.states) == L + 2 and res.states[L] == "final (normed)" and "pre-norm" in res.states[-1]
    assert res.linearity.shape == (L + 1,) and np.isnan(res.linearity[-1])
    assert np.all(res.linearity[:-1] <= 1 + 1e-9) and np.all(res.linearity[:-1] > 0)
    assert np.all((res.anisotropy > 0) & (res.anisotropy <= 1))
    assert np.all(np.isfinite(res.intrinsic_dim)) and np.all(res.intrinsic_dim > 0)
    assert set(res.by_class()["token_class"]) <= {"punctuation", "stop word", "number", "space", "other"}
    # the final normed row is really ln_final of the last block's output (recomputed here)
    seqs_out = run(model, ["The capital of France is Paris."], capture=[f"blocks.{L - 1}.hook_resid_post"])
    h = seqs_out.activations[f"blocks.{L - 1}.hook_resid_post"][0]
    with torch.no_grad():
        normed = final_norm(model, h)
    assert not torch.allclose(normed, h)  # the row differs from the pre-norm one
    # TwoNN per row is the reference estimator on the first id_points tokens
    assert res.params.id_method == "reference" and res.params.id_points == 800
    assert np.isfinite(twonn_dimension(torch.randn(300, 8), "reference"))
