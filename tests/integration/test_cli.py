"""The ``mechscope`` CLI: models, dashboard, next-token."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mechscope.app.cli import main
from mechscope.probes.results import Result


@pytest.mark.integration
def test_next_token_writes_result(smollm2, tmp_path, capsys):
    out = tmp_path / "paris"
    assert main(["next-token", "--prompt", "The capital of France is", "--k", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "' Paris'" in printed.splitlines()[2]  # the first row of the table
    assert {p.name for p in out.iterdir()} >= {"result.json", "table.csv", "top_k.html"}
    r = Result.load(out)
    assert r.top_tokens[0] == " Paris" and len(r.top_ids) == 5
    assert r.params.prompt == "The capital of France is" and r.model_id == "smollm2-135m"
    model = smollm2.model
    with torch.no_grad():  # an independent forward pass gives the same probabilities
        ref = model(torch.tensor([list(r.prompt_ids)]))[0, -1].float().softmax(-1)
    top = torch.topk(ref, 5)
    assert list(r.top_ids) == top.indices.tolist()
    np.testing.assert_allclose(r.top_probs, top.values.double().numpy(), rtol=1e-4)
    # rerunning into the same folder replaces the saved result
    assert main(["next-token", "--prompt", "The capital of France is", "--k", "3", "--out", str(out)]) == 0
    assert len(Result.load(out).top_ids) == 3


@pytest.mark.integration
def test_next_token_with_head_mask(smollm2, tmp_path, capsys):
    """--mask-head L:H:zero gives the distribution of a forward pass with that head's z zeroed."""
    out = tmp_path / "masked"
    assert main(["next-token", "--prompt", "The capital of France is", "--mask-head", "3:2:zero",
                 "--clamp-neuron", "20:100=40", "--out", str(out)]) == 0
    assert "mask L3H2 (zero), neuron L20N100 = 40" in capsys.readouterr().out
    r = Result.load(out)

    def zero_head(z, hook):
        z[:, :, 2] = 0.0
        return z

    def clamp(act, hook):
        act[..., 100] = 40.0
        return act

    model = smollm2.model
    with torch.no_grad():
        ref = model.run_with_hooks(torch.tensor([list(r.prompt_ids)]), fwd_hooks=[
            ("blocks.3.attn.hook_z", zero_head), ("blocks.20.mlp.hook_post", clamp)])[0, -1].float().softmax(-1)
    top = torch.topk(ref, 10)
    assert list(r.top_ids) == top.indices.tolist()
    np.testing.assert_allclose(r.top_probs, top.values.double().numpy(), rtol=1e-4)
    assert [iv.describe() for iv in r.params.interventions] == ["mask L3H2 (zero)", "neuron L20N100 = 40"]


@pytest.mark.integration
def test_rerun_reproduces_a_saved_result(smollm2, tmp_path, capsys):
    out = tmp_path / "nt"
    assert main(["next-token", "--prompt", "The capital of France is", "--k", "7", "--mask-head", "3:2:zero",
                 "--out", str(out)]) == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["type"] == "next_token"
    ivs = doc["fields"]["params"]["$object"]["interventions"]
    assert ivs == [{"kind": "head_mask", "family": "intervention", "layer": 3, "head": 2, "mode": "zero"}]
    capsys.readouterr()
    assert main(["rerun", str(out), "--out", str(tmp_path / "again")]) == 0
    assert "tables equal" in capsys.readouterr().out
    from mechscope.analyses.catalog import load_result

    a, b = load_result(out), load_result(tmp_path / "again")
    assert a.params == b.params
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame())
    # nothing a saved folder holds names a network resource
    for f in (tmp_path / "again").iterdir():
        text = f.read_bytes().decode("utf-8", errors="replace")
        assert "https://" not in text and "cdn" not in text, f.name

