"""The ``mechscope`` CLI: models, dashboard, next-token."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from app.cli import main
from probes.results import Result

ROOT = Path(__file__).resolve().parents[2]


def test_models_table(capsys):
    from probes.models import EMBEDDED

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["name", "installed", "licence", "source"]
    rows = {line.split()[0]: line for line in lines[2:4]}
    assert set(rows) == set(EMBEDDED)
    for name, spec in EMBEDDED.items():
        cells = rows[name].split()
        installed = cells[2] if "(default)" in rows[name] else cells[1]
        assert installed == ("yes" if spec.installed() else "no")
        assert spec.licence in rows[name]
        assert (spec.install_hint in rows[name]) != spec.installed()  # the hint only where needed
    assert "smollm2-135m (default)" in out
    assert "Any TransformerLens model name" in out and "local Hugging Face cache" in out


def test_models_subprocess():
    proc = subprocess.run([sys.executable, "-m", "app", "models"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "smollm2-135m" in proc.stdout and proc.stderr == ""


def test_dashboard_execs_streamlit(monkeypatch):
    import app.commands.dashboard as dash

    seen = []
    monkeypatch.setattr(dash.os, "execv", lambda path, argv: seen.append((path, argv)))
    assert main(["dashboard", "--port", "8765", "--headless"]) == 0
    (path, argv), = seen
    assert path == sys.executable and argv[1:4] == ["-m", "streamlit", "run"]
    assert Path(argv[4]) == ROOT / "app" / "Home.py" and Path(argv[4]).is_file()
    opts = dict(zip(argv[5::2], argv[6::2]))
    assert opts == {"--server.port": "8765", "--server.headless": "true", "--browser.gatherUsageStats": "false"}


def test_dashboard_bad_port(capsys, monkeypatch):
    import app.commands.dashboard as dash

    monkeypatch.setattr(dash.os, "execv", lambda *a: pytest.fail("must not start"))
    assert main(["dashboard", "--port", "70000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mechscope: error: Port 70000 is out of range (1..65535)."]


def test_parse_interventions():
    from app.commands.next_token import parse_interventions
    from probes.errors import InputError
    from probes.interventions import HeadMask, NeuronClamp

    assert parse_interventions(["3:2", "4:0:zero"], ["5:17=-2.5", "1:2=1e3"]) == [
        HeadMask(3, 2, "uniform"), HeadMask(4, 0, "zero"), NeuronClamp(5, 17, value=-2.5), NeuronClamp(1, 2, value=1000.0)]
    for bad in (["3"], ["3:2:half"], ["a:b"]):
        with pytest.raises(InputError, match="--mask-head"):
            parse_interventions(bad, [])
    for bad in (["3:2"], ["3:2=1.2.3"], ["3=1"]):
        with pytest.raises(InputError, match="--clamp-neuron"):
            parse_interventions([], bad)


def test_out_dir_guard(tmp_path, capsys):
    """Never replace a file, or a folder holding something other than a saved result."""
    f = tmp_path / "file"
    f.write_text("keep me")
    keep = tmp_path / "dir"
    keep.mkdir()
    (keep / "notes.txt").write_text("keep me too")
    for out in (f, keep):
        assert main(["next-token", "--prompt", "Hi", "--out", str(out)]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert f.read_text() == "keep me" and (keep / "notes.txt").read_text() == "keep me too"


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
    from analyses.catalog import load_result

    a, b = load_result(out), load_result(tmp_path / "again")
    assert a.params == b.params
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame())
    # nothing a saved folder holds names a network resource
    for f in (tmp_path / "again").iterdir():
        text = f.read_bytes().decode("utf-8", errors="replace")
        assert "https://" not in text and "cdn" not in text, f.name


def test_rerun_refuses_crafted_results(tmp_path, capsys):
    folder = tmp_path / "crafted"
    folder.mkdir()
    for doc in ({"type": "os:system", "format": 2, "fields": {}},
                {"type": "tests.unit.test_results:ToyResult", "format": 2, "fields": {}},
                {"type": "next_token", "format": 2,
                 "fields": {"model_id": "smollm2-135m", "params": {"$object": {"kind": "system", "family": "params"}}}}):
        (folder / "result.json").write_text(json.dumps(doc))
        assert main(["rerun", str(folder)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Unknown" in err[0], err
