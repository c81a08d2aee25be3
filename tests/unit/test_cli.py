"""The ``mechscope`` CLI: models, dashboard, next-token."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mechscope.app.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_models_table(capsys):
    from mechscope.probes.models import EMBEDDED

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
    import mechscope.app.commands.dashboard as dash

    seen = []
    monkeypatch.setattr(dash.os, "execv", lambda path, argv: seen.append((path, argv)))
    assert main(["dashboard", "--port", "8765", "--headless"]) == 0
    (path, argv), = seen
    assert path == sys.executable and argv[1:4] == ["-m", "streamlit", "run"]
    assert Path(argv[4]) == ROOT / "app" / "Home.py" and Path(argv[4]).is_file()
    opts = dict(zip(argv[5::2], argv[6::2]))
    assert opts == {"--server.port": "8765", "--server.headless": "true", "--browser.gatherUsageStats": "false",
                    "--client.toolbarMode": "viewer"}


def test_dashboard_flags_match_the_repository_config():
    """``make run`` reads .streamlit/config.toml; ``mechscope dashboard`` passes the same as flags."""
    import tomllib

    from mechscope.app.commands.dashboard import SETTINGS

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    from_file = {f"--{section}.{k}": str(v).lower() if isinstance(v, bool) else str(v)
                 for section, table in cfg.items() for k, v in table.items()}
    assert from_file == SETTINGS
    assert SETTINGS["--client.toolbarMode"] in ("viewer", "minimal")  # never the developer toolbar (deploy)


def test_dashboard_bad_port(capsys, monkeypatch):
    import mechscope.app.commands.dashboard as dash

    monkeypatch.setattr(dash.os, "execv", lambda *a: pytest.fail("must not start"))
    assert main(["dashboard", "--port", "70000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mechscope: error: Port 70000 is out of range (1..65535)."]


def test_parse_interventions():
    from mechscope.app.commands.next_token import parse_interventions
    from mechscope.probes.errors import InputError
    from mechscope.probes.interventions import HeadMask, NeuronClamp

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



def test_out_of_memory_is_one_line_naming_the_flags_that_shrink_the_run(monkeypatch, capsys, tmp_path):
    import torch

    import mechscope.app.commands.sinks as sinks_cmd

    def oom(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(sinks_cmd, "run_sinks", oom)
    assert main(["sinks", "--out", str(tmp_path / "r"), "--batch-size", "8", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mechscope: error: out of memory on cuda: lower ")
    assert "--batch-size (now 8)" in err[0] and "--max-tokens (now 64)" in err[0]


def test_other_runtime_errors_are_not_called_out_of_memory(monkeypatch):
    import mechscope.app.commands.sinks as sinks_cmd

    def bug(args):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(sinks_cmd, "run_sinks", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["sinks", "--out", "unused"])


def test_a_field_with_listed_choices_gets_them_as_flag_choices(capsys):
    """The shared text_set field lists the shipped sets (read from the data): the CLI refuses
    another name with argparse's one-line usage error."""
    from mechscope.probes.datasets import text_sets

    with pytest.raises(SystemExit) as exc:
        main(["sinks", "--out", "unused", "--text-set", "no-such-set"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'no-such-set'" in err and all(name in err for name in text_sets())
