"""Install the SAEs of a GPU training run as the shipped ones.

``python -m mechscope.saes.ship RUN_DIR`` reads what ``benchmarks/gpu_saes.py train-general``
wrote into ``RUN_DIR`` (one fp16 safetensors file per SAE with SAE-Lens' cfg in its metadata,
``train_general.json``, and beside it ``compare_archs.json``, ``corpus_manifest.json``,
``log.txt``) and writes:

* ``saes/weights/<model>/resid-L<layer>/`` — SAE-Lens folders with their checksums;
* ``saes/weights/manifest.json`` — per SAE its hook, shape, sha256 and the per-domain held-out
  evals at the dtype its weights are stored in, read from the files (``eval_domains``: both
  position protocols of :mod:`saes.evals`,
  and ``dead_all``: latents that fire on no token of any domain); the training recipe, corpus,
  device and throughput;
* ``saes/weights/training/`` — the run's json results and log, for the benchmarks and the record.

Only folders and files it names are replaced; anything else in ``saes/weights`` is left alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from mechscope.probes.errors import InputError
from mechscope.saes.store import MANIFEST, WEIGHTS_DIR, import_packed

EVAL_KEYS = ("tokens", "l0", "explained_variance", "explained_variance_saebench", "ce_recovered", "dead_fraction",
             "tokens_skip0", "explained_variance_skip0", "ce_recovered_skip0", "ce_recovered_mean_skip0",
             "dead_fraction_skip0", "dense_fraction_skip0", "ce_clean", "ce_sae", "ce_zero")
RECORD_FILES = ("train_general.json", "compare_archs.json", "corpus_manifest.json", "log.txt")


def shipped_entry(name: str, layer: int, hook: str, evals: dict, storage_dtype: str, sums: dict, cfg: dict) -> dict:
    """The manifest entry of one trained SAE: its evals at the dtype its weights are stored in
    (float32's when the run did not evaluate that dtype)."""
    dt = storage_dtype if storage_dtype in evals else "float32"
    domains = {d: {k: s[k] for k in EVAL_KEYS if k in s} for d, s in evals[dt].items()}
    return {"path": name, "sha256": sums, "hook_name": hook, "layer": layer, "architecture": cfg["architecture"],
            "d_in": cfg["d_in"], "d_sae": cfg["d_sae"], "k": cfg.get("k"), "eval_dtype": dt, "eval_domains": domains,
            "dead_all": evals.get(f"{dt}:dead_all")}


def _stored_dtype(packed: Path) -> str:
    """The floating dtype of a packed SAE's tensors (what it is shipped in)."""
    from safetensors import safe_open

    with safe_open(str(packed), framework="pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118
    names = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}
    floats = sorted(names[d] for d in dtypes if d in names)
    if len(floats) != 1:
        raise InputError(f"{packed}: expected one floating dtype, found {sorted(dtypes)}.")
    return floats[0]


def ship(run: Path, weights_dir: Path = WEIGHTS_DIR, model: str = "smollm2-135m", device_name: str | None = None) -> dict:
    """Install the run's SAEs into ``weights_dir``; returns the new manifest."""
    run, weights_dir = Path(run), Path(weights_dir)
    res_path = run / "train_general.json"
    if not res_path.exists():
        raise InputError(f"{res_path} not found: point at the --out folder of `gpu_saes train-general`.")
    res = json.loads(res_path.read_text())
    train, evals = res["train"], res["evals"]["new"]
    saes, dtypes, sae_lens = {}, set(), None
    for run_name, hook in train["names"].items():  # run names like "topk-L12"
        packed = run / f"{run_name}.safetensors"
        if not packed.exists():
            raise InputError(f"{packed} not found (train-general writes one file per SAE).")
        layer = int(run_name.rsplit("-L", 1)[1])
        name = f"{model}/resid-L{layer}"
        stored = _stored_dtype(packed)
        dtypes.add(stored)
        sums = import_packed(packed, weights_dir / name)
        cfg = json.loads((weights_dir / name / "cfg.json").read_text())
        sae_lens = sae_lens or cfg.get("metadata", {}).get("sae_lens_training_version")
        saes[name] = shipped_entry(name, layer, hook, evals[run_name], stored, sums, cfg)
    corpus = {}
    if (run / "corpus_manifest.json").exists():
        cm = json.loads((run / "corpus_manifest.json").read_text())
        corpus = {k: cm.get(k) for k in ("recipe", "proportions_asked", "proportions", "total_tokens", "available_tokens",
                                         "filler", "dedupe")}
        corpus["train_sha256"] = cm.get("files", {}).get("train", {}).get("sha256")
    manifest = {
        "model": model, "storage_dtype": dtypes.pop() if len(dtypes) == 1 else sorted(dtypes),
        "training": {"tokens": train["tokens"], "spec": train["spec"], "seconds": train["seconds"],
                     "tokens_per_s": train["tokens_per_s"], "forward_rate": res.get("forward_rate"),
                     "autocast_lm": train.get("autocast_lm"), "device": device_name, "sae_lens": sae_lens,
                     "corpus": corpus,
                     "eval_sets": "data/sae_eval (per-domain held-out rows; both position protocols of saes.evals)"},
        "saes": saes,
    }
    rec = weights_dir / "training"
    rec.mkdir(parents=True, exist_ok=True)
    for f in RECORD_FILES:
        if (run / f).exists():
            shutil.copyfile(run / f, rec / ("gpu_log.txt" if f == "log.txt" else f))
    (weights_dir / MANIFEST.name).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="the --out folder of `benchmarks/gpu_saes.py train-general`")
    ap.add_argument("--device-name", default=None, help="the GPU the run used (recorded in the manifest)")
    args = ap.parse_args(argv)
    m = ship(args.run, device_name=args.device_name)
    for n, e in m["saes"].items():
        worst = min(s["explained_variance_skip0"] for s in e["eval_domains"].values())
        print(f"{n}: worst-domain EV (pos >= 1) {worst:.3f}, dead on every domain {e['dead_all']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
