"""Converted-weights cache, sha256-checked (``probes.checksums``).

Reading a GGUF (de-quantisation, HF model, TransformerLens conversion) takes ~20 s on two
CPU cores, so converted parameters are cached as safetensors (never pickle) with a sidecar
``meta.json`` of sha256 digests; any mismatch is a miss and the cache is rebuilt.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from mechscope.probes.checksums import sha256_file
from mechscope.probes.convert import empty_hooked, cfg_json
from mechscope.probes.errors import ChecksumError


# ---------------------------------------------------------------------------------------
# Converted-weights cache
#
# Reading the GGUF (de-quantisation, HF model, TransformerLens conversion) takes ~20 s on
# 2 CPU cores. The converted HookedTransformer parameters are therefore cached as
# safetensors under $MECHSCOPE_CACHE (default ~/.cache/mechscope; "off" disables it), with
# the tokenizer saved by ``save_pretrained`` (JSON) beside them, in a folder keyed by the
# source file's expected sha256, the transformer-lens version and the dtype. A sidecar
# ``meta.json`` records the sha256 of every cached file; a warm load verifies those hashes
# (instead of the GGUF's, which it does not read) and treats any mismatch, missing file or
# unreadable sidecar as a miss: the cache is rebuilt from the GGUF, never trusted.

CACHE_FORMAT = 2  # bump whenever what is cached changes (old caches then miss)


def cache_root() -> Path | None:
    """Where converted weights are cached (None when caching is off)."""
    value = os.environ.get("MECHSCOPE_CACHE")
    if value is not None and value.strip().lower() in ("", "0", "off", "none"):
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "mechscope"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def converted_cache_dir(name: str, source_sha256: str, dtype: torch.dtype) -> Path | None:
    root = cache_root()
    if root is None:
        return None
    from importlib.metadata import version

    key = f"{source_sha256[:16]}-tl{version('transformer-lens')}-{_dtype_name(dtype)}"
    return root / name / key


def cache_meta(name: str, source_sha256: str, dtype: torch.dtype) -> dict:
    from importlib.metadata import version

    return {
        "format": CACHE_FORMAT,
        "model": name,
        "source_sha256": source_sha256,
        "transformer_lens": version("transformer-lens"),
        "dtype": _dtype_name(dtype),
    }


def save_converted(directory: Path, model, meta: dict) -> bool:
    """Write ``model``'s parameters, tokenizer and config to ``directory`` atomically (a
    temporary folder renamed into place). Returns False (and leaves nothing) on OSError."""
    import shutil
    import tempfile

    from safetensors.torch import save_file

    directory = Path(directory)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        tmp.chmod(0o755)
    except OSError:
        return False
    try:
        params = {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters()}
        save_file(params, str(tmp / "model.safetensors"))
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        files = sorted(str(f.relative_to(tmp)) for f in tmp.rglob("*") if f.is_file())
        doc = {**meta, "cfg": cfg_json(model.cfg), "files": {f: sha256_file(tmp / f) for f in files}}
        (tmp / "meta.json").write_text(json.dumps(doc, indent=1))
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)
        return True
    except OSError:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_converted(directory: Path | None, meta: dict, device: str, dtype: torch.dtype):
    """The cached HookedTransformer in ``directory``, or None when it is absent, stale or
    fails any sha256 check (the caller then rebuilds from the source file)."""
    if directory is None or not (Path(directory) / "meta.json").is_file():
        return None
    directory = Path(directory)
    try:
        doc = json.loads((directory / "meta.json").read_text())
        if any(doc.get(k) != v for k, v in meta.items()) or "model.safetensors" not in doc["files"]:
            return None
        for rel, digest in doc["files"].items():
            if sha256_file(directory / rel) != digest:
                return None
        from safetensors.torch import load_file

        tokenizer = None
        if (directory / "tokenizer").is_dir():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(directory / "tokenizer"))
            tokenizer.padding_side = "right"
        model = empty_hooked(doc["cfg"], tokenizer, dtype, init_weights=False)
        # assign=True adopts the (memory-mapped, copy-on-write) tensors instead of copying
        params = load_file(str(directory / "model.safetensors"))
        missing, unexpected = model.load_state_dict(params, strict=False, assign=True)
        expected = {n for n, _ in model.named_parameters()}
        if unexpected or set(missing) & expected:
            return None
        model.cfg.device = device
        return model.to(device)
    except Exception:  # any unreadable or inconsistent cache is a miss, never an error
        return None


def cached_or_built(name: str, source_sha256: str, device: str, dtype: torch.dtype, build):
    """The converted model from the cache, else ``build()`` (from the source file), then cached."""
    meta = cache_meta(name, source_sha256, dtype)
    cache_dir = converted_cache_dir(name, source_sha256, dtype)
    model = load_converted(cache_dir, meta, device, dtype)
    if model is not None:
        return model
    model = build()
    if cache_dir is not None:
        save_converted(cache_dir, model, meta)
    return model
