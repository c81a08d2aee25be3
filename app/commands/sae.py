"""``mechscope sae train|eval|features|absorption|geometry|list``: sparse autoencoders (SAE-Lens)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mechscope.app.commands.common import add_model_out, add_params, check_out_dir, load_model, params_from_args, progress, save_result
from mechscope.probes.errors import InputError


def register(sub) -> None:
    p = sub.add_parser("sae", help="train, evaluate and browse sparse autoencoders",
                       description="Residual-stream SAEs for the embedded model (SAE-Lens).")
    ns = p.add_subparsers(dest="sae_command", metavar="ACTION")

    ls = ns.add_parser("list", help="shipped SAEs and their held-out evals")
    ls.set_defaults(func=run_list)

    from mechscope.saes.train import ARCHITECTURES, TrainSpec

    spec = TrainSpec()  # the training module's defaults are the CLI's
    t = ns.add_parser("train", help="train SAEs (GPU; on CPU it says how long it would take)")
    t.add_argument("--layers", default=",".join(map(str, spec.layers)), help="residual layers (default %(default)s)")
    t.add_argument("--arch", default=spec.architecture, choices=ARCHITECTURES, help="architecture (default %(default)s)")
    t.add_argument("--d-sae", type=int, default=spec.d_sae, help="latents per SAE (default %(default)s)")
    t.add_argument("--k", type=int, default=spec.k, help="TopK/BatchTopK k; JumpReLU target L0 (default %(default)s)")
    t.add_argument("--tokens", type=float, default=float(spec.training_tokens),
                   help="training tokens (default %(default).0f)")
    t.add_argument("--corpus", type=Path, default=None, help="data/sae_corpus.py output (default its cache folder)")
    t.add_argument("--device", default=None)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--yes", action="store_true", help="train on CPU anyway")
    t.set_defaults(func=run_train)

    from mechscope.saes.absorption import AbsorptionParams
    from mechscope.saes.evals import SaeEvalParams
    from mechscope.saes.features import SaeFeaturesParams

    e = ns.add_parser("eval", help="L0, explained variance, CE loss recovered, dead/dense latents, per eval domain",
                      description="Every shipped SAE (or the one named) on every shipped per-domain held-out set "
                                  "(data/sae_eval: prose, code, documentation, numbers, dialogue), or on --source corpus "
                                  "(a built data/sae_corpus.py corpus) or --text-set.")
    e.add_argument("sae", nargs="?", default=None, help="SAE name or folder (default: every shipped SAE)")
    add_model_out(e, out_required=False)
    add_params(e, SaeEvalParams, skip=("saes",))
    e.set_defaults(func=run_eval)

    f = ns.add_parser("features", help="feature pages: top contexts, density, logit effects")
    f.add_argument("sae", nargs="?", default=SaeFeaturesParams.sae)
    add_model_out(f, out_required=False)
    add_params(f, SaeFeaturesParams, skip=("sae",))
    f.add_argument("--latent", type=int, default=None, help="print this latent's page")
    f.add_argument("--fires-on", default=None, help="which latents fire on this text")
    f.add_argument("--promotes", default=None, help="which latents promote this token")
    f.set_defaults(func=run_features)

    a = ns.add_parser("absorption", help="first-letter feature absorption (Chanin et al.; SAEBench's protocol)")
    add_model_out(a, out_required=False)
    add_params(a, AbsorptionParams)
    a.set_defaults(func=run_absorption)

    from mechscope.saes.geometry import SaeGeometryParams

    g = ns.add_parser("geometry", help="decoder-direction cloud: eigenvalue power law and volume (Li et al. 2024)")
    add_model_out(g, out_required=False)  # the model is loaded only for --lobes
    add_params(g, SaeGeometryParams, skip=("texts",))
    g.set_defaults(func=run_geometry)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_list(args: argparse.Namespace) -> int:
    from mechscope.saes.store import eval_summary, manifest, shipped_names

    m = manifest()
    print("Worst domain of the shipped held-out sets (data/sae_eval); pos>=1: position 0 left out, as in training.")
    print(f"{'name':24} {'hook':26} {'arch':5} {'d_sae':>5} {'L0':>5} {'EV':>6} {'CE rec':>7} "
          f"{'EV pos>=1':>9} {'CE pos>=1':>9} {'dead':>6}")
    for n in shipped_names():
        e = m["saes"][n]
        s = eval_summary(e)
        print(f"{n:24} {e['hook_name']:26} {e['architecture']:5} {e['d_sae']:5d} {s['l0']:5.1f} "
              f"{s['explained_variance']:6.3f} {s['ce_recovered']:7.3f} {s['explained_variance_skip0']:9.3f} "
              f"{s['ce_recovered_skip0']:9.3f} {s['dead_all']:6.3f}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    import torch

    from mechscope.saes.train import main as train_main

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    argv = ["--layers", args.layers, "--arch", args.arch, "--d-sae", str(args.d_sae), "--k", str(args.k),
            "--tokens", str(args.tokens), "--device", device, "--out", str(args.out), "--ship", str(args.out / "ship")]
    if args.corpus is not None:
        argv += ["--corpus", str(args.corpus)]
    if args.yes:
        argv.append("--yes")
    return train_main(argv)


def run_eval(args: argparse.Namespace) -> int:
    from mechscope.saes.evals import SaeEvalParams, sae_eval

    params = params_from_args(SaeEvalParams, args, saes=(args.sae,) if args.sae else ())
    check_out_dir(args.out)
    res = sae_eval(load_model(args), params, progress=progress("SAE × domain"))
    cols = ["sae", "domain", "explained_variance", "ce_recovered", "l0", "dead_fraction",
            "explained_variance_skip0", "ce_recovered_skip0", "tokens"]
    print(res.table[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print("(reference protocol; *_skip0: position 0 left out, as in training; every column in the saved table)")
    save_result(res, args.out)
    return 0


def run_features(args: argparse.Namespace) -> int:
    from mechscope.probes.tokens import str_tokens
    from mechscope.saes.features import SaeFeaturesParams, latents_for_token, latents_on_text, logit_effects, sae_features
    from mechscope.saes.store import load_sae

    params = params_from_args(SaeFeaturesParams, args, sae=args.sae)
    check_out_dir(args.out)
    model = load_model(args)
    sae = load_sae(args.sae, model=model, cached=True)
    if args.fires_on:
        _, _, table = latents_on_text(model, sae, args.fires_on)
        print(table.to_string(index=False))
        return 0
    if args.promotes:
        print(latents_for_token(model, sae, args.promotes).to_string(index=False))
        return 0
    if args.latent is not None and not 0 <= args.latent < sae.cfg.d_sae:
        raise InputError(f"Latent {args.latent} is out of range: this SAE has {sae.cfg.d_sae} latents (0..{sae.cfg.d_sae - 1}).")
    res = sae_features(model, params, progress=progress("texts"))
    if args.latent is not None:
        le = logit_effects(model, sae, [args.latent])
        print(f"latent {args.latent}: density {res.density[args.latent]:.2e}, max {res.max_act[args.latent]:.2f}")
        print("promotes:", str_tokens(model, le["top_ids"][0]))
        print("suppresses:", str_tokens(model, le["bottom_ids"][0]))
        print(res.contexts(model, args.latent).to_string(index=False))
    else:
        print(f"{res.n_tokens:,} tokens; {(res.density == 0).mean():.1%} of latents never fire")
    save_result(res, args.out)
    return 0


def run_absorption(args: argparse.Namespace) -> int:
    from mechscope.saes.absorption import AbsorptionParams, absorption

    params = params_from_args(AbsorptionParams, args)
    check_out_dir(args.out)
    res = absorption(load_model(args), params, progress=progress("SAEs"))
    print(res.summary.to_string(index=False))
    save_result(res, args.out)
    return 0


def run_geometry(args: argparse.Namespace) -> int:
    from mechscope.saes.geometry import SaeGeometryParams, sae_geometry

    params = params_from_args(SaeGeometryParams, args)
    check_out_dir(args.out)
    model = load_model(args) if params.lobes else None  # the galaxy reads only the SAEs' weights
    res = sae_geometry(model, params, progress=progress("texts"))
    print(res.to_frame().drop(columns=["hook"]).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    save_result(res, args.out)
    return 0
