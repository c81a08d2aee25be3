"""The distribution as a user installs it: a wheel built from the repository, installed into a
fresh virtual environment (its dependencies reached through a path file, so nothing is
downloaded), run from outside the source tree. It must add one top-level name, ``mechscope``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
                    str(ROOT)], check=True, capture_output=True, timeout=600)
    wheel = next((tmp / "dist").glob("mechscope-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    purelib = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    # the test interpreter's packages (torch, transformer-lens, ...) as plain paths: their .pth files,
    # among them the editable install of this repository, are not processed there
    purelib.mkdir(parents=True, exist_ok=True)
    (purelib / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
                    str(wheel)], check=True, capture_output=True, timeout=600)
    return wheel, venv, tmp


def _run(venv: Path, cwd: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    return subprocess.run([str(venv / "bin" / "mechscope"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.integration
def test_wheel_has_one_top_level_name_and_its_data(wheel_env):
    wheel, _, _ = wheel_env
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"mechscope"}
    for needed in ("mechscope/data/tasks/needles.jsonl", "mechscope/data/long/paradise_lost.txt", "mechscope/app/Home.py",
                   "mechscope/saes/weights/manifest.json", "mechscope/data/checksums.json"):
        assert needed in names, needed
    assert any(n.startswith("mechscope/app/pages/") for n in names)
    assert any(n.endswith("sae_weights.safetensors") for n in names)


@pytest.mark.integration
def test_installed_wheel_runs_outside_the_source_tree(wheel_env):
    _, venv, tmp = wheel_env
    work = tmp / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import mechscope, mechscope.probes as p; print(mechscope.__file__, p.__file__)"],
                           cwd=work, capture_output=True, text=True, check=True).stdout
    assert str(ROOT) not in where and "site-packages" in where
    models = _run(venv, work, "models")
    assert models.returncode == 0 and "smollm2-135m" in models.stdout, models.stderr[-2000:]
    out = work / "nt"
    nt = _run(venv, work, "next-token", "--prompt", "The capital of France is", "--out", str(out))
    assert nt.returncode == 0, nt.stderr[-2000:]
    doc = json.loads((out / "result.json").read_text())
    assert doc["type"] == "next_token"
    sl = _run(venv, work, "sae", "list")
    assert sl.returncode == 0 and "resid-L12" in sl.stdout, sl.stderr[-2000:]
