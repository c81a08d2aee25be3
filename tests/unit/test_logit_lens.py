"""Logit lens on a tiny model: the last layer is the model's own forward pass."""

import pytest
import torch

from analyses.logit_lens import decode_resid, logit_lens
from probes.capture import run
from probes.errors import InputError
from tests.tiny import tiny_model

IDS = [3, 17, 4, 29, 8, 11, 40, 2]


def test_last_layer_equals_model_logits():
    m = tiny_model(n_layers=3, seed=2, dtype=torch.float64)
    out = run(m, [IDS], capture=["blocks.2.hook_resid_post"], return_logits=True)
    logits = out.logits[0]
    resid = out.activations["blocks.2.hook_resid_post"][0]
    with torch.no_grad():
        torch.testing.assert_close(decode_resid(m, resid[None], "final")[0], logits, rtol=1e-12, atol=1e-12)
    res = logit_lens(m, IDS, k=3)
    p = torch.softmax(logits.float(), -1).float()
    assert torch.equal(res.top_ids[-1, :, 0].long(), logits.argmax(-1))
    assert torch.allclose(res.top_probs[-1], torch.topk(p, 3, dim=-1).values, atol=1e-6)  # float32 output
    assert torch.allclose(res.kl_to_final[-1], torch.zeros(len(IDS)), atol=1e-6)
    assert (res.target_rank[-1] == 1).all()
    # first_top1_layer: the first layer whose argmax is the final argmax
    for t, first in enumerate(res.first_top1_layer):
        tops = res.top_ids[:, t, 0]
        assert int(tops[first]) == int(tops[-1])
        assert all(int(tops[l]) != int(tops[-1]) for l in range(first))


def test_raw_and_final_readouts_values_by_hand():
    """Axis-aligned weights: W_U = identity on the first 32 tokens and γ_i = 1 + i. A state
    h = 2·e_5 + 1.5·e_9 (d = 32, RMSNorm eps ε) decodes raw to logits 2 and 1.5 on tokens 5
    and 9; through the final norm to γ_i·h_i / rms(h) = 12/rms and 15/rms, with
    rms(h) = sqrt((4 + 2.25)/32 + ε)."""
    m = tiny_model(n_layers=1, d_model=32, d_vocab=40, seed=1, dtype=torch.float64)
    with torch.no_grad():
        m.unembed.W_U.zero_()
        m.unembed.W_U[:, :32] = torch.eye(32, dtype=torch.float64)
        m.unembed.b_U.zero_()
        m.ln_final.w.copy_(1.0 + torch.arange(32, dtype=torch.float64))
    h = torch.zeros(32, dtype=torch.float64)
    h[5], h[9] = 2.0, 1.5
    rms = (6.25 / 32 + m.cfg.eps) ** 0.5
    with torch.no_grad():
        raw, fin = decode_resid(m, h, "raw"), decode_resid(m, h, "final")
    assert float(raw[5]) == pytest.approx(2.0, rel=1e-12) and float(raw[9]) == pytest.approx(1.5, rel=1e-12)
    assert float(fin[5]) == pytest.approx(12 / rms, rel=1e-9) and float(fin[9]) == pytest.approx(15 / rms, rel=1e-9)
    # the orders differ: raw ranks token 5 first, the final norm's γ ranks token 9 first
    assert int(raw.argmax()) == 5 and int(fin.argmax()) == 9


def test_generic_loader_keeps_gamma_out_of_the_unembedding(monkeypatch):
    """Models from the TransformerLens path load unprocessed (from_pretrained_no_processing),
    so γ is not folded into W_U and "raw" stays raw."""
    import transformer_lens

    from probes import models

    calls = []
    monkeypatch.setattr(models, "_hf_cached", lambda name: True)
    monkeypatch.setattr(models, "_official_tl_name", lambda name: "gpt2")
    monkeypatch.setattr(transformer_lens.HookedTransformer, "from_pretrained_no_processing",
                        classmethod(lambda cls, name, **kw: calls.append(("no_processing", name)) or "model"))
    monkeypatch.setattr(transformer_lens.HookedTransformer, "from_pretrained",
                        classmethod(lambda cls, name, **kw: calls.append(("processed", name)) or "model"))
    out = models.load_transformer_lens(models.ModelSpec("gpt2", "test", "test", 0, True, None), "cpu", torch.float32)
    assert out == "model" and calls == [("no_processing", "gpt2")]


def test_target_token_and_bad_input():
    m = tiny_model(n_layers=2, seed=4)
    res = logit_lens(m, IDS, target=9)
    assert res.target_ids == [9] * len(IDS)
    assert ((res.target_rank >= 1) & (res.target_rank <= 50)).all()
    assert set(res.figures()) == {"top_token_heatmap", "target_trajectory", "kl_to_final"}
    with pytest.raises(InputError):
        logit_lens(m, IDS, target=50)
    with pytest.raises(InputError):
        logit_lens(m, IDS, target="dog")  # no tokenizer
    with pytest.raises(InputError):
        logit_lens(m, IDS, norm="weird")
    with pytest.raises(InputError):
        logit_lens(m, IDS, pos=99)


def test_cli_without_prompt_is_one_line(capsys):
    from app.cli import main

    assert main(["logit-lens"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--prompt" in err[0]
