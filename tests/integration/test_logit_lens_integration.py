"""Logit lens and LLM-Microscope metrics on the embedded model."""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration

PROMPT = "The capital of France is"


def test_paris_and_the_layer_it_appears(smollm2):
    from mechscope.analyses.logit_lens import logit_lens
    from mechscope.probes.capture import run

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
    from mechscope.analyses.microscope import linearity_score, microscope
    from mechscope.probes.capture import run
    from mechscope.probes.readout import final_norm
    from tests.unit.test_microscope import reference_twonn

    model = smollm2.model
    res = microscope(model, text_set="mixed", total_tokens=800, max_tokens=100, id_points=800)
    L = model.cfg.n_layers
    assert res.linearity.shape == (L,) and res.anisotropy.shape == (L + 2,)
    assert res.states[0] == "embed" and res.states[-1] == "final norm" and res.in_reference[-2] is False
    assert np.all(res.linearity <= 1 + 1e-9) and np.all(res.linearity > 0)
    assert np.all((res.anisotropy > 0) & (res.anisotropy <= 1))
    assert np.all(np.isfinite(res.intrinsic_dim[1:])) and np.all(res.intrinsic_dim[1:] > 0)
    assert set(res.by_class()["token_class"]) <= {"punctuation", "stop word", "number", "space", "other"}
    # the same states, captured independently: the last reference transition ends at ln_final(h),
    # and TwoNN equals LLM-Microscope's algorithm (re-implemented in the unit tests)
    seqs, total = [], 0
    from mechscope.probes.texts import encode_texts, select_texts
    for s in encode_texts(model, select_texts(None, "mixed"), 100):
        if total >= 800:
            break
        seqs.append(s[: 800 - total])
        total += len(seqs[-1])
    names = ["blocks.27.hook_resid_post", "blocks.28.hook_resid_post", "blocks.29.hook_resid_post"]
    out = run(model, seqs, capture=names)
    h27, h28, h29 = (torch.cat(out.activations[n]).float() for n in names)
    with torch.no_grad():
        normed = final_norm(model, h29).float()
    assert res.linearity[-1] == pytest.approx(linearity_score(h28, normed), abs=1e-4)
    for row, h in ((28, h27), (30, h29), (31, normed)):
        assert res.intrinsic_dim[row] == pytest.approx(reference_twonn(h), rel=1e-6)
