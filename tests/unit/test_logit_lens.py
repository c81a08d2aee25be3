"""Logit lens on a tiny model: the last layer is the model's own forward pass."""

import pytest
import torch

from analyses.logit_lens import decode_resid, logit_lens
from probes.capture import run
from probes.errors import InputError
from tests.tiny import tiny_model

IDS = [3, 17, 4, 29, 8, 11, 40, 2]


def test_last_layer_equals_model_logits():
    m = tiny_model(n_layers=3, seed=2)
    out = run(m, [IDS], capture=["blocks.2.hook_resid_post"], return_logits=True)
    logits = out.logits[0]
    resid = out.activations["blocks.2.hook_resid_post"][0]
    with torch.no_grad():
        assert torch.equal(decode_resid(m, resid[None], "final")[0], logits)
    res = logit_lens(m, IDS, k=3)
    p = torch.softmax(logits.float(), -1)
    assert torch.equal(res.top_ids[-1, :, 0].long(), logits.argmax(-1))
    assert torch.allclose(res.top_probs[-1], torch.topk(p, 3, dim=-1).values, atol=1e-6)
    assert torch.allclose(res.kl_to_final[-1], torch.zeros(len(IDS)), atol=1e-6)
    assert (res.target_rank[-1] == 1).all()
    # first_top1_layer: the first layer whose argmax is the final argmax
    for t, first in enumerate(res.first_top1_layer):
        tops = res.top_ids[:, t, 0]
        assert int(tops[first]) == int(tops[-1])
        assert all(int(tops[l]) != int(tops[-1]) for l in range(first))


def test_raw_variant_skips_the_final_norm():
    m = tiny_model(n_layers=2, seed=4)
    with torch.no_grad():
        m.ln_final.w.mul_(3.0)  # a non-trivial final-norm weight
    res_raw = logit_lens(m, IDS, norm="raw", k=2)
    res_fin = logit_lens(m, IDS, norm="final", k=2)
    out = run(m, [IDS], capture=["blocks.0.hook_resid_post"])
    h = out.activations["blocks.0.hook_resid_post"][0]
    raw = torch.log_softmax(h @ m.W_U + m.b_U, -1).detach()
    assert torch.allclose(res_raw.top_probs[0], torch.topk(raw.exp(), 2, -1).values, atol=1e-6)
    assert not torch.allclose(res_raw.top_probs, res_fin.top_probs)


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
