"""Logit lens on a tiny model: the last layer is the model's own forward pass."""

import math

import pandas as pd
import pytest
import torch

from mechscope.analyses.logit_lens import (
    LogitLensParams,
    LogitLensResult,
    decode_resid,
    logit_lens,
)
from mechscope.probes.capture import run
from mechscope.probes.errors import InputError
from mechscope.probes.results import Result
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


def _wired_model():
    """Blocks write nothing (W_O = W_out = 0), so every resid_post is the token's embedding;
    token 5 embeds as h = (1, 2, 0, …); W_U = [I | 0], b_U = 0; final-norm γ = (10, 1, 1, …)."""
    m = tiny_model(n_layers=2, seed=4, dtype=torch.float64)
    with torch.no_grad():
        for blk in m.blocks:
            blk.attn.W_O.zero_(); blk.attn.b_O.zero_()
            blk.mlp.W_out.zero_(); blk.mlp.b_out.zero_()
        m.W_E.zero_()
        m.W_E[5, 0], m.W_E[5, 1] = 1.0, 2.0
        m.W_U.zero_()
        m.W_U[:, : m.cfg.d_model] = torch.eye(m.cfg.d_model, dtype=torch.float64)
        m.b_U.zero_()
        m.ln_final.w.fill_(1.0)
        m.ln_final.w[0] = 10.0
    return m


def test_raw_and_final_lens_differ_by_the_gamma_effect_computed_by_hand():
    m = _wired_model()
    V, d, eps = m.cfg.d_vocab, m.cfg.d_model, m.cfg.eps
    raw = logit_lens(m, [5], norm="raw", k=2)
    fin = logit_lens(m, [5], norm="final", k=2)
    # raw: logits (1, 2, 0 × 48) → top token 1 with p = e² / (e + e² + 48), then token 0
    p_raw = math.e**2 / (math.e + math.e**2 + (V - 2))
    assert raw.top_ids[:, 0, 0].tolist() == [1, 1] and raw.top_ids[:, 0, 1].tolist() == [0, 0]
    assert float(raw.top_probs[0, 0, 0]) == pytest.approx(p_raw, rel=1e-6)  # the lens computes softmax in float32
    # final: h / rms(h) ⊙ γ with rms = √(5/d + eps): logits (10/rms, 2/rms, 0 …) → token 0 wins
    rms = math.sqrt(5 / d + eps)
    p_fin = 1 / (1 + math.exp(-8 / rms) + (V - 2) * math.exp(-10 / rms))
    assert fin.top_ids[:, 0, 0].tolist() == [0, 0]
    assert float(fin.top_probs[1, 0, 0]) == pytest.approx(p_fin, rel=1e-6)  # the lens computes softmax in float32
    # the tracked target (final top-1 = token 0) under the raw lens: p = e / (e + e² + 48), rank 2
    assert float(raw.target_prob[0, 0]) == pytest.approx(math.e / (math.e + math.e**2 + V - 2), rel=1e-6)  # the lens computes softmax in float32
    assert int(raw.target_rank[0, 0]) == 2 and raw.first_top1_layer == [-1]


def test_transformer_lens_loader_loads_unprocessed(monkeypatch):
    """probes.models.load_transformer_lens must call from_pretrained_no_processing (no γ folding)."""
    import transformer_lens

    from mechscope.probes import models

    calls = []

    def no_processing(name, **kw):
        calls.append(("no_processing", name))
        return "model"

    def processed(*a, **kw):
        raise AssertionError("from_pretrained (processing) must not be used")

    monkeypatch.setattr(transformer_lens.HookedTransformer, "from_pretrained_no_processing", staticmethod(no_processing))
    monkeypatch.setattr(transformer_lens.HookedTransformer, "from_pretrained", staticmethod(processed))
    monkeypatch.setattr(models, "_hf_cached", lambda name: True)
    spec = models.ModelSpec(name="gpt2", source="test", licence="MIT", n_ctx=1024, prepend_bos=True, bos_token=None)
    out = models.load_transformer_lens(spec, "cpu", torch.float32)
    assert out == "model" and len(calls) == 1 and calls[0][0] == "no_processing"


def test_params_save_load_rerun(tmp_path):
    m = tiny_model(n_layers=2, seed=4)
    res = logit_lens(m, IDS, k=3, target=9)
    assert isinstance(res.params, LogitLensParams) and res.params.prompt == tuple(IDS)
    back = Result.load(res.save(tmp_path / "r"))
    assert isinstance(back, LogitLensResult) and back.params == res.params
    pd.testing.assert_frame_equal(back.rerun(m).to_frame(), res.to_frame())
    assert logit_lens(m, LogitLensParams(prompt=tuple(IDS), k=3, target=9)).to_frame().equals(res.to_frame())


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
    from mechscope.app.cli import main

    assert main(["logit-lens"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--prompt" in err[0]
