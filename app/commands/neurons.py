"""``mechscope neurons decode|search|activity|verify``: MLP neurons read through the unembedding."""

from __future__ import annotations

import argparse
from pathlib import Path


def _common(p) -> None:
    p.add_argument("--model", default=None, help="model name (default: the embedded smollm2-135m)")
    p.add_argument("--norm", choices=["final", "raw"], default="final",
                   help="fold the final norm's weight into W_U (default) or use W_U raw")
    p.add_argument("--direction", choices=["out", "up", "gate"], default="out",
                   help="decode what a neuron writes (W_out row, default) or reads (up / gate column)")


def register(sub) -> None:
    p = sub.add_parser("neurons", help="decode, search, profile and verify MLP neurons",
                       description="MLP neurons through the unembedding (arXiv 2501.02688) and their activity "
                                   "(Voita et al. 2023).")
    ns = p.add_subparsers(dest="neurons_command", metavar="ACTION")

    d = ns.add_parser("decode", help="top/bottom-k tokens of every neuron (or one neuron's card)")
    _common(d)
    d.add_argument("--k", type=int, default=10)
    d.add_argument("--layer", type=int, default=None, help="only this layer")
    d.add_argument("--neuron", type=int, default=None, help="print this neuron's card (needs --layer)")
    d.add_argument("--softmax", action="store_true", help="also the softmax probability of each top token")
    d.add_argument("--out", type=Path, default=None, help="directory to save the Result in")
    d.set_defaults(func=run_decode)

    s = ns.add_parser("search", help="which neurons most promote a token or string")
    _common(s)
    s.add_argument("token", help="a string (e.g. ' dog', quoted with its leading space) or a token id with --id")
    s.add_argument("--id", action="store_true", help="TOKEN is a token id")
    s.add_argument("--top", type=int, default=20)
    s.set_defaults(func=run_search)

    a = ns.add_parser("activity", help="taxonomy over a text set, or one neuron's max-activating contexts")
    a.add_argument("--model", default=None)
    a.add_argument("--texts", default="mixed", help="text set name (default mixed)")
    a.add_argument("--max-texts", type=int, default=None)
    a.add_argument("--threshold", type=float, default=0.5, help="a neuron fires when its activation exceeds this")
    a.add_argument("--layer", type=int, default=None)
    a.add_argument("--neuron", type=int, default=None, help="max-activating contexts of this neuron (needs --layer)")
    a.add_argument("--k", type=int, default=10)
    a.add_argument("--out", type=Path, default=None)
    a.set_defaults(func=run_activity)

    v = ns.add_parser("verify", help="clamp the most specialised neurons; does p(decoded top token) rise?")
    v.add_argument("--model", default=None)
    v.add_argument("--n", type=int, default=20)
    v.add_argument("--min-layer", type=int, default=None)
    v.add_argument("--value", type=float, default=None, help="clamp value (default 10 × max |activation| on the prompts)")
    v.add_argument("--out", type=Path, default=None)
    v.set_defaults(func=run_verify)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _load(args):
    from probes.models import DEFAULT_MODEL, load

    return load(args.model or DEFAULT_MODEL)


def _save(res, out) -> None:
    if out:
        res.save(out, html=True)
        print(f"saved to {out}")


def run_decode(args: argparse.Namespace) -> int:
    from analyses.neurons import decode_neurons
    from app.commands.next_token import check_out_dir
    from probes.errors import InputError

    check_out_dir(args.out)
    if args.neuron is not None and args.layer is None:
        raise InputError("--neuron needs --layer.")
    model, spec = _load(args)
    res = decode_neurons(model, k=args.k, norm=args.norm, direction=args.direction,
                         layers=None if args.layer is None else [args.layer], softmax=args.softmax, progress=True)
    if args.neuron is not None:
        print(f"{spec.name} L{args.layer}N{args.neuron} ({args.direction}, norm={args.norm}):")
        print(res.card(args.layer, args.neuron).to_string(index=False))
    else:
        n = res.top_ids.shape[0] * res.top_ids.shape[1]
        print(f"{spec.name}: decoded {n} neurons; the most specialised (top-1 − top-2 logit):")
        print(res.specialised(15).to_string(index=False))
    _save(res, args.out)
    return 0


def run_search(args: argparse.Namespace) -> int:
    from analyses.neurons import neurons_for_token
    from probes.errors import InputError

    token = args.token
    if args.id:
        try:
            token = int(token)
        except ValueError:
            raise InputError(f"--id given but {args.token!r} is not an integer.") from None
    model, spec = _load(args)
    frame = neurons_for_token(model, token, top=args.top, norm=args.norm, direction=args.direction)
    print(f"{spec.name}: neurons that most promote {frame['query_tokens'][0]!r} ({args.direction}, norm={args.norm})")
    print(frame.drop(columns=["query_tokens"]).to_string(index=False))
    return 0


def run_activity(args: argparse.Namespace) -> int:
    from analyses.neurons import max_activating, neuron_activity
    from app.commands.next_token import check_out_dir
    from probes.errors import InputError

    check_out_dir(args.out)
    if args.neuron is not None and args.layer is None:
        raise InputError("--neuron needs --layer.")
    model, spec = _load(args)
    if args.neuron is not None:
        res = max_activating(model, args.layer, args.neuron, texts=args.texts, k=args.k, max_texts=args.max_texts,
                             progress=True)
        print(f"{spec.name} L{args.layer}N{args.neuron}: top {args.k} of {len(res.activations)} tokens")
        for row in res.contexts.itertuples():
            print(f"{row.rank:>3}  {row.activation:8.3f}  {row.context!r}")
    else:
        res = neuron_activity(model, texts=args.texts, threshold=args.threshold, max_texts=args.max_texts,
                              layers=None if args.layer is None else [args.layer], progress=True)
        print(f"{spec.name}: {res.n_tokens} tokens, threshold {args.threshold:g}; neurons per category and layer:")
        print(res.counts().to_string(index=False))
    _save(res, args.out)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from analyses.neurons import clamp_verification
    from app.commands.next_token import check_out_dir

    check_out_dir(args.out)
    model, spec = _load(args)
    res = clamp_verification(model, n=args.n, value=args.value, min_layer=args.min_layer)
    print(res.table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"\n{spec.name}: p(decoded top token) rose for {100 * res.fraction_up:.0f}% of {len(res.table)} neurons "
          f"({100 * res.pair_fraction_up:.0f}% of neuron×prompt pairs); median Δp {res.median_delta:.4g}")
    _save(res, args.out)
    return 0
