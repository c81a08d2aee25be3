"""``mechscope sae train|eval|features|absorption|list``: sparse autoencoders (SAE-Lens)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("sae", help="train, evaluate and browse sparse autoencoders",
                       description="Residual-stream SAEs for the embedded model (SAE-Lens).")
    ns = p.add_subparsers(dest="sae_command", metavar="ACTION")

    ls = ns.add_parser("list", help="shipped SAEs and their held-out evals")
    ls.set_defaults(func=run_list)

    t = ns.add_parser("train", help="train SAEs (GPU; on CPU it says how long it would take)")
    t.add_argument("--layers", default="0,6,12,18,24,29")
    t.add_argument("--arch", default="topk", choices=["topk", "batchtopk", "jumprelu"])
    t.add_argument("--d-sae", type=int, default=4096)
    t.add_argument("--k", type=int, default=60)
    t.add_argument("--tokens", type=float, default=20e6)
    t.add_argument("--corpus", type=Path, default=None, help="data/sae_corpus.py output (default its cache folder)")
    t.add_argument("--device", default=None)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--yes", action="store_true", help="train on CPU anyway")
    t.set_defaults(func=run_train)

    e = ns.add_parser("eval", help="L0, explained variance, CE loss recovered, dead/dense latents")
    e.add_argument("sae", nargs="?", default=None, help="SAE name or folder (default: every shipped SAE)")
    e.add_argument("--rows", type=int, default=32, help="held-out corpus rows (256 tokens each; dead-latent counts need ~500 rows)")
    e.add_argument("--texts", default=None, help="evaluate on a shipped text set instead of the held-out corpus")
    e.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    e.add_argument("--out", type=Path, default=None, help="directory to save the Result in")
    e.set_defaults(func=run_eval)

    f = ns.add_parser("features", help="feature pages: top contexts, density, logit effects")
    f.add_argument("sae", nargs="?", default="smollm2-135m/resid-L12")
    f.add_argument("--latent", type=int, default=None, help="print this latent's page")
    f.add_argument("--texts", default="mixed")
    f.add_argument("--n-texts", type=int, default=96)
    f.add_argument("--fires-on", default=None, help="which latents fire on this text")
    f.add_argument("--promotes", default=None, help="which latents promote this token")
    f.add_argument("--out", type=Path, default=None)
    f.set_defaults(func=run_features)

    a = ns.add_parser("absorption", help="first-letter feature absorption (Chanin et al.; SAEBench's protocol)")
    a.add_argument("--saes", default="", help="comma-separated SAE names (default: every shipped SAE)")
    a.add_argument("--n-words", type=int, default=0,
                   help="vocabulary words sampled (default 0: every letters-only token, ~47k prompts: use a GPU; "
                        "on CPU try 2000)")
    a.add_argument("--method", default="k_sparse", choices=["k_sparse", "mean_difference"],
                   help="main latents: k-sparse probing with SAEBench's letter filters (default) or one latent "
                        "by mean-activation difference, every letter averaged")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--batch-size", type=int, default=32)
    a.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    a.add_argument("--out", type=Path, default=None)
    a.set_defaults(func=run_absorption)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def run_list(args: argparse.Namespace) -> int:
    from saes.store import manifest, shipped_names

    m = manifest()
    print(f"{'name':28} {'hook':28} {'arch':6} {'L0':>5} {'EV':>6} {'CE rec':>7} {'dead':>6}")
    for n in shipped_names():
        e = m["saes"][n]
        ev = e["eval_heldout"]
        print(f"{n:28} {e['hook_name']:28} {e['architecture']:6} {ev['l0']:5.1f} {ev['explained_variance']:6.3f} "
              f"{ev['ce_recovered_zero']:7.3f} {ev['dead_fraction']:6.3f}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    import torch

    from saes.train import main as train_main

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    argv = ["--layers", args.layers, "--arch", args.arch, "--d-sae", str(args.d_sae), "--k", str(args.k),
            "--tokens", str(args.tokens), "--device", device, "--out", str(args.out), "--ship", str(args.out / "ship")]
    if args.corpus is not None:
        argv += ["--corpus", str(args.corpus)]
    if args.yes:
        argv.append("--yes")
    return train_main(argv)


def run_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from probes.models import load
    from saes.evals import sae_eval

    model, _ = load(device=_device(args.device))
    bar = tqdm(desc="SAEs", leave=False)

    def progress(done, total):
        bar.total = total
        bar.update(done - bar.n)

    res = sae_eval(model, saes=(args.sae,) if args.sae else (), rows=args.rows, texts=args.texts or "",
                   progress=progress)
    bar.close()
    print(res.table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.out:
        res.save(args.out, html=True)
        print(f"saved to {args.out}")
    return 0


def run_features(args: argparse.Namespace) -> int:
    from probes.models import load
    from probes.tokens import str_tokens
    from saes.features import latents_for_token, latents_on_text, logit_effects, sae_features
    from saes.interventions import sae_for

    model, _ = load()
    sae = sae_for(args.sae, model=model)
    if args.fires_on:
        _, _, table = latents_on_text(model, sae, args.fires_on)
        print(table.to_string(index=False))
        return 0
    if args.promotes:
        print(latents_for_token(model, sae, args.promotes).to_string(index=False))
        return 0
    res = sae_features(model, sae=args.sae, texts=args.texts, n_texts=args.n_texts, progress=True)
    if args.latent is not None:
        le = logit_effects(model, sae, [args.latent])
        print(f"latent {args.latent}: density {res.density[args.latent]:.2e}, max {res.max_act[args.latent]:.2f}")
        print("promotes:", str_tokens(model, le["top_ids"][0]))
        print("suppresses:", str_tokens(model, le["bottom_ids"][0]))
        print(res.contexts(model, args.latent).to_string(index=False))
    else:
        print(f"{res.n_tokens:,} tokens; {(res.density == 0).mean():.1%} of latents never fire")
    if args.out:
        res.save(args.out, html=True)
        print(f"saved to {args.out}")
    return 0


def run_absorption(args: argparse.Namespace) -> int:
    from probes.models import load
    from saes.absorption import absorption

    model, _ = load(device=_device(args.device))
    saes = tuple(s.strip() for s in args.saes.split(",") if s.strip())
    res = absorption(model, saes=saes, n_words=args.n_words, method=args.method, seed=args.seed,
                     batch_size=args.batch_size, progress=True)
    print(res.summary.to_string(index=False))
    if args.out:
        res.save(args.out, html=True)
        print(f"saved to {args.out}")
    return 0
