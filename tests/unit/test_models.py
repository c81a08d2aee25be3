"""Model registry: HF fidelity, checksums, fast failures, BOS policy, converted-weights cache."""

from __future__ import annotations

import json
import shutil
import socket
import time

import pytest
import torch

from mechscope.probes import models, smollm2
from mechscope.probes.errors import ChecksumError, InputError, ModelNotAvailableError, UnknownModelError
from tests.tiny import tiny_model


def test_unknown_name_fails_fast_with_one_line():
    with pytest.raises(UnknownModelError) as exc:
        models.load("no-such-model-xyz")
    assert "\n" not in str(exc.value) and "smollm2-135m" in str(exc.value)


def test_empty_name_is_input_error():
    with pytest.raises(InputError):
        models.load("  ")


def test_uncached_transformer_lens_name_fails_fast_without_network(monkeypatch):
    if models._hf_cached("gpt2"):
        pytest.skip("gpt2 is in this machine's Hugging Face cache")
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # must not depend on the offline flag
    models.get_spec("gpt2")  # import transformer_lens outside the timed part
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as exc:
        models.load("gpt2")
    elapsed = time.perf_counter() - start
    assert attempts == []
    assert "not in the local Hugging Face cache" in str(exc.value) and "\n" not in str(exc.value)
    assert elapsed < 5.0  # the "fast, no hang" guard, not a speed target


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_save_and_load_converted_round_trip(tmp_path):
    model = tiny_model(n_key_value_heads=2)
    meta = {"format": models.CACHE_FORMAT, "model": "tiny", "source_sha256": "ab" * 32, "dtype": "float32"}
    assert models.save_converted(tmp_path / "c", model, meta)
    loaded = models.load_converted(tmp_path / "c", meta, "cpu", torch.float32)
    assert loaded is not None and loaded.cfg.n_key_value_heads == 2
    for name, p in _params(model).items():
        assert torch.equal(dict(loaded.named_parameters())[name], p), name
    tokens = torch.tensor([[1, 5, 7, 9, 2]])
    # identical weights (checked bit for bit above); the forward may take other BLAS kernels for
    # the memory-mapped tensors, so outputs agree to float32 rounding, not bit for bit
    torch.testing.assert_close(loaded(tokens), model(tokens), rtol=1e-5, atol=1e-5)
    doc = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert doc["files"]["model.safetensors"] == models.sha256_file(tmp_path / "c" / "model.safetensors")


def test_load_converted_misses_on_corruption_or_stale_key(tmp_path):
    model = tiny_model()
    meta = {"format": models.CACHE_FORMAT, "model": "tiny", "source_sha256": "ab" * 32, "dtype": "float32"}
    models.save_converted(tmp_path / "c", model, meta)
    assert models.load_converted(tmp_path / "c", {**meta, "dtype": "bfloat16"}, "cpu", torch.float32) is None
    assert models.load_converted(tmp_path / "absent", meta, "cpu", torch.float32) is None
    weights = tmp_path / "c" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # one flipped bit pattern in the last tensor: sha256 check must catch it
    weights.write_bytes(bytes(data))
    assert models.load_converted(tmp_path / "c", meta, "cpu", torch.float32) is None
    (tmp_path / "c" / "meta.json").write_text("{not json")
    assert models.load_converted(tmp_path / "c", meta, "cpu", torch.float32) is None


def test_smollm2_cache_logic_cold_warm_corrupt(tmp_path, monkeypatch):
    """Cold load reads (and checks) the GGUF and fills the cache; a warm load does not read
    the GGUF; a corrupted cache is rebuilt from the GGUF; a corrupted GGUF with a cold cache
    raises ChecksumError before anything is read or cached."""
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF fake weights")
    monkeypatch.setattr(smollm2, "SMOLLM2_SHA256", models.sha256_file(gguf))
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))
    built = []

    def fake_build(path, device, dtype):
        built.append(path)
        return tiny_model(seed=len(built))

    monkeypatch.setattr(smollm2, "smollm2_from_gguf", fake_build)
    cold = smollm2.load_smollm2(None, "cpu", torch.float32, gguf_path=gguf)
    assert len(built) == 1
    cache_dir = models.converted_cache_dir("smollm2-135m", smollm2.SMOLLM2_SHA256, torch.float32)
    assert (cache_dir / "meta.json").is_file()

    gguf.write_bytes(b"corrupt!")  # a warm load must not read the GGUF at all
    warm = smollm2.load_smollm2(None, "cpu", torch.float32, gguf_path=gguf)
    assert len(built) == 1
    for name, p in _params(cold).items():
        assert torch.equal(dict(warm.named_parameters())[name], p)

    gguf.write_bytes(b"GGUF fake weights")
    weights = cache_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    rebuilt = smollm2.load_smollm2(None, "cpu", torch.float32, gguf_path=gguf)
    assert len(built) == 2  # corrupted cache → rebuilt from the GGUF, not an error
    assert models.load_converted(cache_dir, models.cache_meta("smollm2-135m", smollm2.SMOLLM2_SHA256, torch.float32),
                                 "cpu", torch.float32) is not None
    assert rebuilt is not None

    shutil.rmtree(cache_dir)
    gguf.write_bytes(b"GGUF fake weightz")
    with pytest.raises(ChecksumError):
        smollm2.load_smollm2(None, "cpu", torch.float32, gguf_path=gguf)
    assert len(built) == 2 and not cache_dir.exists()


def test_cache_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("MECHSCOPE_CACHE", "off")
    assert models.cache_root() is None
    assert models.converted_cache_dir("smollm2-135m", "ab" * 32, torch.float32) is None


def test_model_lock_excludes_other_threads():
    import threading

    model = tiny_model()
    lock = models.model_lock(model)
    got = []
    with lock:
        t = threading.Thread(target=lambda: got.append(models.model_lock(model).acquire(timeout=0.2)))
        t.start()
        t.join()
        assert lock.acquire(timeout=0.2)  # re-entrant for the holder
        lock.release()
    assert got == [False]  # another thread cannot enter while it is held


def test_gemma_missing_package_is_clear(monkeypatch):
    import importlib.util

    from mechscope.probes import gemma
    from mechscope.probes.errors import MissingPackageError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n.startswith(gemma.PACKAGE) else real(n, *a))
    with pytest.raises(MissingPackageError) as exc:
        gemma.load_gemma3("cpu", torch.float32)
    assert "mechscope[gemma]" in str(exc.value) and "\n" not in str(exc.value)


def test_contiguous_for_forward_changes_layout_not_results():
    # float64: a transposed layout may take another BLAS kernel, which in float32 can change
    # the last bits on some CPUs; in float64 the results agree far below any meaningful change
    model = tiny_model(n_layers=2, n_key_value_heads=2, dtype=torch.float64)
    tokens = torch.tensor([[4, 8, 15, 16, 23, 42]])
    ref_logits, ref_cache = model.run_with_cache(tokens)
    values = _params(model)
    assert models.contiguous_for_forward(model) > 0
    assert not model.blocks[0].mlp.W_in.is_contiguous() and model.blocks[0].mlp.W_in.T.is_contiguous()
    for name, p in model.named_parameters():
        assert p.shape == values[name].shape and torch.equal(p, values[name]), name
    logits, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-12, atol=1e-12)
    for key in ref_cache.keys():
        torch.testing.assert_close(cache[key], ref_cache[key], rtol=1e-12, atol=1e-12, msg=key)
    assert models.contiguous_for_forward(model) == 0  # idempotent

