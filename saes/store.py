"""Shipped SAEs: export (fp16 safetensors + SAE-Lens cfg.json), sha256-checked loading.

An SAE on disk is SAE-Lens' own format: a folder with ``cfg.json`` and
``sae_weights.safetensors`` (read by ``sae_lens.SAE.load_from_disk``). Shipped SAEs live in
``saes/weights/<model>/<point>-L<layer>/`` with their weights stored as float16 (the config
says float32: SAE-Lens' loader up-casts on load). ``saes/weights/manifest.json`` holds the
sha256 of every shipped file and each SAE's eval summary.

:func:`load_sae` accepts

* a short name ``smollm2-135m/resid-L12`` (shipped; every file sha256-checked first),
* a local folder (sha256-checked when it carries a ``checksums.json``; pickled weights such as
  ``*.pt``/``*.pth``/``*.bin``/``*.pkl`` are refused — only safetensors are ever read),
* ``sae-lens:<release>/<sae_id>`` for SAE-Lens pretrained releases, which need the Hugging
  Face hub (or its local cache); these machines reach no hub, and the message says so.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mechscope.probes.checksums import sha256_file
from mechscope.probes.errors import ChecksumError, InputError, ModelNotAvailableError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = WEIGHTS_DIR / "manifest.json"
CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


def export_dir(src: Path, dst: Path, dtype: torch.dtype = torch.float16) -> dict:
    """Copy an SAE-Lens SAE folder with its float tensors cast to ``dtype``; write checksums."""
    from safetensors.torch import load_file

    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    state = load_file(str(src / WEIGHTS))
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    return _write_folder(dst, state, json.loads((src / CFG).read_text()))


def _write_folder(dst: Path, state: dict, cfg: dict) -> dict:
    """Write an SAE-Lens folder (weights, cfg read as float32 on cpu) and its checksums."""
    from safetensors.torch import save_file

    save_file(state, str(dst / WEIGHTS))
    cfg = {**cfg, "dtype": "float32", "device": "cpu"}
    (dst / CFG).write_text(json.dumps(cfg, indent=1, sort_keys=True) + "\n")
    sums = {name: sha256_file(dst / name) for name in (CFG, WEIGHTS)}
    (dst / "checksums.json").write_text(json.dumps(sums, indent=1) + "\n")
    return sums


def manifest() -> dict:
    if not MANIFEST.exists():
        return {"saes": {}}
    return json.loads(MANIFEST.read_text())


def eval_summary(entry: dict) -> dict:
    """A shipped SAE's worst domain on each held-out measure (its manifest ``eval_domains``): the
    lowest explained variance and CE recovered under both position protocols of ``saes.evals``,
    the highest L0, and ``dead_all`` (latents firing on no token of any domain)."""
    doms = entry["eval_domains"]

    def low(key):
        return min(s[key] for s in doms.values())

    return {"domains": len(doms), "tokens": sum(s["tokens"] for s in doms.values()),
            "l0": max(s["l0"] for s in doms.values()),
            "explained_variance": low("explained_variance"), "ce_recovered": low("ce_recovered"),
            "explained_variance_skip0": low("explained_variance_skip0"), "ce_recovered_skip0": low("ce_recovered_skip0"),
            "dead_all": entry["dead_all"]}


def shipped_names() -> list[str]:
    """Shipped SAE names, by model then layer."""
    saes = manifest()["saes"]
    return sorted(saes, key=lambda n: (n.split("/")[0], saes[n].get("layer", 0), n))


@dataclass(frozen=True)
class SaeInfo:
    name: str
    path: Path
    hook_name: str
    layer: int | None
    architecture: str
    d_in: int
    d_sae: int


def _check_no_pickle(path: Path) -> None:
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        raise InputError(f"{path.name} is a pickle file: mechscope reads SAE weights only from safetensors.")
    if path.is_dir():
        bad = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if bad:
            raise InputError(f"SAE folder {path} holds pickled weights ({', '.join(bad)}); "
                             "mechscope reads only safetensors and will not unpickle.")


def _verify(path: Path, sums: dict[str, str]) -> None:
    for name, expected in sums.items():
        f = path / name
        if not f.exists():
            raise ChecksumError(f"SAE file {f} is missing.")
        actual = sha256_file(f)
        if actual != expected:
            raise ChecksumError(f"SAE file {f} does not match its sha256 ({actual[:12]}… ≠ {expected[:12]}…); "
                                "it is corrupted or was changed: restore it.")


def resolve(name_or_path: str | os.PathLike) -> tuple[Path, dict[str, str] | None]:
    """(folder, expected sha256s) of a shipped name or local folder."""
    text = str(name_or_path).strip()
    if not text:
        raise InputError("No SAE given: use a shipped name such as smollm2-135m/resid-L12 or a folder.")
    shipped = manifest()["saes"]
    if text in shipped:
        entry = shipped[text]
        return WEIGHTS_DIR / entry["path"], entry["sha256"]
    path = Path(text).expanduser()
    if path.exists():
        _check_no_pickle(path)
        if path.is_file():
            if path.suffix != ".safetensors":
                raise InputError(f"{path} is not an SAE folder or safetensors file.")
            path = path.parent
        sums_file = path / "checksums.json"
        sums = json.loads(sums_file.read_text()) if sums_file.exists() else None
        return path, sums
    if "/" in text and text.split("/")[0] in {n.split("/")[0] for n in shipped}:
        layers = ", ".join(n.split("/", 1)[1] for n in shipped_names() if n.startswith(text.split("/")[0] + "/"))
        raise InputError(f"No shipped SAE {text!r}: available are {layers}.")
    raise InputError(f"Unknown SAE {text!r}: use a shipped name ({', '.join(shipped_names()) or 'none shipped'}), "
                     "a folder with cfg.json + sae_weights.safetensors, or sae-lens:<release>/<sae_id>.")


def load_sae(name_or_path: str | os.PathLike, device: str | None = None, *, model=None,
             sha256: str | None = None, cached: bool = False):
    """A ``sae_lens.SAE`` (float32, eval mode) from a shipped name, folder or SAE-Lens release id.

    ``model``: check that the SAE fits it (hook point, width) and put it on the model's device.
    ``sha256``: also pin the digest of the weights file. ``cached``: share one process-wide
    copy per name (what interventions use: their hooks are rebuilt on every run); a cached
    SAE is moved, not copied, to the device asked for.
    """
    sae = _cached_sae(str(name_or_path)) if cached else _read_sae(name_or_path, device or "cpu")
    if sha256:
        path, _ = resolve(name_or_path)
        actual = sha256_file(path / WEIGHTS)
        if actual != sha256:
            raise InputError(f"SAE {str(name_or_path)!r} weights have sha256 {actual[:12]}…, not the pinned {sha256[:12]}….")
    if model is not None:
        check_fits(sae, model)
        device = device or model.cfg.device
    if device is not None and str(sae.W_dec.device) != str(torch.device(device)):
        sae = sae.to(device)
    return sae


@functools.lru_cache(maxsize=8)
def _cached_sae(name: str):
    return _read_sae(name, "cpu")


def _read_sae(name_or_path: str | os.PathLike, device: str):
    text = str(name_or_path).strip()
    if text.startswith("sae-lens:"):
        return _load_pretrained(text.removeprefix("sae-lens:"), device)
    path, sums = resolve(text)
    _check_no_pickle(path)
    if not (path / CFG).exists() or not (path / WEIGHTS).exists():
        raise InputError(f"{path} is not an SAE folder: it needs {CFG} and {WEIGHTS}.")
    if sums is not None:
        _verify(path, sums)
    from sae_lens import SAE

    try:
        sae = SAE.load_from_disk(str(path), device=device, dtype="float32")
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(f"{path} is not a valid SAE-Lens SAE: {exc}".splitlines()[0]) from None
    sae.eval()
    sae.mechscope_name = text
    return sae


def _load_pretrained(ident: str, device: str):
    if "/" not in ident:
        raise InputError("SAE-Lens pretrained SAEs are named sae-lens:<release>/<sae_id>.")
    release, sae_id = ident.split("/", 1)
    from huggingface_hub import try_to_load_from_cache
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        raise InputError(f"Unknown SAE-Lens release {release!r} (see SAE-Lens' pretrained_saes.yaml).")
    lookup = directory[release]
    if sae_id not in lookup.saes_map:
        raise InputError(f"SAE-Lens release {release!r} has no SAE {sae_id!r}.")
    cached = try_to_load_from_cache(lookup.repo_id, f"{lookup.saes_map[sae_id]}/cfg.json")
    if not isinstance(cached, str):  # not in the local cache: say so at once, no network retries
        raise ModelNotAvailableError(
            f"SAE-Lens release {release!r} / {sae_id!r} ({lookup.repo_id}) is not in the local Hugging Face "
            "cache, and this machine cannot reach the hub: download it on a machine with network access "
            "into the HF cache, or use a shipped SAE (smollm2-135m/resid-L…)."
        )
    try:
        sae = SAE.from_pretrained(release, sae_id, device=device)
    except Exception as exc:  # noqa: BLE001 - a partial cache gets the one message below
        raise ModelNotAvailableError(
            f"SAE-Lens release {release!r} / {sae_id!r} is only partly cached ({type(exc).__name__})."
        ) from None
    sae = sae[0] if isinstance(sae, tuple) else sae
    sae.eval()
    sae.mechscope_name = f"sae-lens:{ident}"
    return sae


def layer_of_hook(hook_name: str) -> int | None:
    parts = hook_name.split(".")
    if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None


def check_fits(sae, model) -> str:
    """The hook name of ``sae`` after checking that it fits ``model``."""
    hook = sae.cfg.metadata.hook_name
    if not hook or hook not in model.hook_dict:
        raise InputError(f"SAE hook {hook!r} is not a hook point of this model.")
    if sae.cfg.d_in != model.cfg.d_model:
        raise InputError(f"SAE d_in {sae.cfg.d_in} does not match the model's d_model {model.cfg.d_model} at {hook}.")
    return hook


def shipped_for_layer(layer: int, model_name: str = "smollm2-135m", point: str = "resid") -> str:
    name = f"{model_name}/{point}-L{layer}"
    if name not in manifest()["saes"]:
        have = ", ".join(n.split("-L")[-1] for n in shipped_names() if n.startswith(f"{model_name}/{point}-L"))
        raise InputError(f"No shipped SAE at layer {layer}: SAEs exist at layers {have or 'none'}.")
    return name


def import_packed(packed: Path, dst: Path) -> dict:
    """A one-file SAE (fp16 safetensors with SAE-Lens' cfg.json in its metadata, as
    ``benchmarks/gpu_saes.py`` writes it) -> an SAE-Lens folder with checksums. Tensors are copied as is."""
    from safetensors import safe_open

    packed, dst = Path(packed), Path(dst)
    with safe_open(str(packed), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    if "cfg" not in meta:
        raise InputError(f"{packed} carries no SAE-Lens cfg in its metadata.")
    dst.mkdir(parents=True, exist_ok=True)
    return _write_folder(dst, state, json.loads(meta["cfg"]))
