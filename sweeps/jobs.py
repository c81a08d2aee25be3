"""Jobs of a sweep, keyed by content.

A job is one analysis run: (model, analysis kind, full Params, inputs). Its key is the
sha256 of the canonical JSON (sorted keys, no spaces) of the model name and its weights
digest, the analysis kind, every Params field (defaults included), the inputs it reads
(text shard) and the mechscope version — so the same job always has the same key, and
changing one parameter changes only the keys of the jobs it touches.

Weights digests: the embedded models' pinned GGUF sha256 (checked whenever they load); a
model from the Hugging Face cache: the sha256 of its snapshot's blob names (the hub names
LFS blobs by their sha256); a model from a custom loader: the sha256 of its parameters.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass

from mechscope.sweeps.spec import ModelEntry, SpecError, SweepSpec


@dataclass(frozen=True)
class Job:
    key: str
    kind: str
    model: ModelEntry
    weights: str
    params: object  # the analysis' Params instance
    inputs: dict  # {} or {"text_set", "n_texts", "shard", "shards"}
    overrides: dict  # the fields the spec set (for the report's columns)

    def describe(self) -> dict:
        """JSON-ready record of the job (what the index and plan store)."""
        return {"key": self.key, "kind": self.kind, "model": self.model.to_dict(), "weights": self.weights,
                "params": self.params.to_dict(), "inputs": self.inputs, "overrides": _jsonable(self.overrides)}


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)


def job_key(model: str, weights: str, kind: str, params_dict: dict, inputs: dict, version: str) -> str:
    doc = {"model": model, "weights": weights, "kind": kind, "params": params_dict, "inputs": inputs,
           "version": version}
    return hashlib.sha256(canonical(doc).encode()).hexdigest()


def make_jobs(spec: SweepSpec) -> list[Job]:
    from mechscope import __version__
    from mechscope.analyses.catalog import import_all
    from mechscope.probes.errors import InputError
    from mechscope.probes.results import ANALYSES
    from mechscope.probes.serial import build

    import_all()
    shards = spec.texts.shard_texts() if spec.texts is not None and any(a.shard_texts for a in spec.analyses) else []
    jobs: list[Job] = []
    seen: set[str] = set()
    for ai, a in enumerate(spec.analyses):
        cls = ANALYSES[a.kind].params_cls
        models = a.models or spec.models
        for variant in a.variants:
            inputs_list = [({}, {})]
            if a.shard_texts:
                t = spec.texts
                inputs_list = [({"texts": s, "text_set": None},
                                {"text_set": t.text_set, "n_texts": t.n_texts, "shard": i, "shards": t.shards})
                               for i, s in enumerate(shards)]
            for extra, inputs in inputs_list:
                try:
                    params = build(cls, {**variant, **extra})
                except InputError as exc:
                    raise SpecError(f"analysis {ai + 1} ({a.kind}) {_short(variant)}: {exc}") from None
                except (TypeError, ValueError) as exc:
                    raise SpecError(f"analysis {ai + 1} ({a.kind}) {_short(variant)}: {exc}".splitlines()[0]) from None
                for m in models:
                    w = weights_digest(m)
                    key = job_key(m.name, w, a.kind, params.to_dict(), inputs, __version__)
                    if key in seen:
                        continue  # the same job twice in one spec runs once
                    seen.add(key)
                    jobs.append(Job(key, a.kind, m, w, params, inputs, dict(variant)))
    return jobs


def _short(variant: dict) -> str:
    text = canonical(_jsonable(variant))
    return text if len(text) < 80 else text[:77] + "..."


def _jsonable(value):
    from mechscope.probes.serial import encode

    return encode(value)


def weights_digest(model: ModelEntry) -> str:
    """The digest that identifies ``model``'s weights (see the module docstring)."""
    if model.loader:
        return _loader_digest(model.loader)
    return _registry_digest(model.name)


@functools.lru_cache(maxsize=None)
def _registry_digest(name: str) -> str:
    from mechscope.probes.models import EMBEDDED, _official_tl_name

    if name == "smollm2-135m":
        from mechscope.probes.smollm2 import SMOLLM2_SHA256

        return SMOLLM2_SHA256
    if name == "gemma-3-270m":
        from mechscope.probes.gemma import GEMMA3_SHA256

        return GEMMA3_SHA256
    if name in EMBEDDED:  # an embedded model without a pinned digest: its name and loader
        return hashlib.sha256(canonical({"embedded": name, "loader": EMBEDDED[name].loader}).encode()).hexdigest()
    from huggingface_hub import try_to_load_from_cache

    cfg = try_to_load_from_cache(_official_tl_name(name), "config.json")
    if not isinstance(cfg, str):
        raise SpecError(f"Model {name!r} is not in the local Hugging Face cache.")
    from pathlib import Path

    snapshot = Path(cfg).parent
    blobs = sorted(p.resolve().name for p in snapshot.iterdir() if p.is_file())
    return hashlib.sha256(canonical({"hf": _official_tl_name(name), "blobs": blobs}).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def _loader_digest(loader: str) -> str:
    model = call_loader(loader, "cpu")
    return state_digest(model)


def state_digest(model) -> str:
    """sha256 over a model's parameters and buffers (names, dtypes, shapes, bytes)."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def call_loader(loader: str, device: str):
    import importlib

    module, _, fn = loader.partition(":")
    return getattr(importlib.import_module(module), fn)(device)


def load_model(model: ModelEntry, device: str):
    """The HookedTransformer of a sweep's model on ``device`` (one load per process and model)."""
    if model.loader:
        return _custom(model.loader, device)
    from mechscope.probes.models import load

    return load(model.name, device=device).model


@functools.lru_cache(maxsize=8)
def _custom(loader: str, device: str):
    m = call_loader(loader, device)
    m.eval()
    return m
