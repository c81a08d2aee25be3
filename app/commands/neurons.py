"""``mechscope neurons decode|search|activity|verify``: MLP neurons read through the unembedding."""

from __future__ import annotations

import argparse

from mechscope.app.commands.common import add_model_out, add_params, check_out_dir, load_model, params_from_args, progress, save_result
from mechscope.probes.errors import InputError


def _common(p, params_cls) -> None:
    add_model_out(p, out_required=False)
    add_params(p, params_cls, skip=("layers", "token", "texts", "neurons", "prompts"))


def register(sub) -> None:
    p = sub.add_parser("neurons", help="decode, search, profile and verify MLP neurons",
                       description="MLP neurons through the unembedding (arXiv 2501.02688) and their activity "
                                   "(Voita et al. 2023).")
    ns = p.add_subparsers(dest="neurons_command", metavar="ACTION")

    from mechscope.analyses.neurons import ActivityParams, ClampParams, DecodeParams, SearchParams

    d = ns.add_parser("decode", help="top/bottom-k tokens of every neuron (or one neuron's card)")
    _common(d, DecodeParams)
    d.add_argument("--layer", type=int, default=None, help="only this layer")
    d.add_argument("--neuron", type=int, default=None, help="print this neuron's card (needs --layer)")
    d.set_defaults(func=run_decode)

    s = ns.add_parser("search", help="which neurons most promote a token or string")
    _common(s, SearchParams)
    s.add_argument("token", help="a string (e.g. ' dog', quoted with its leading space) or a token id with --id")
    s.add_argument("--id", action="store_true", help="TOKEN is a token id")
    s.set_defaults(func=run_search)

    a = ns.add_parser("activity", help="taxonomy over a text set, or one neuron's max-activating contexts")
    _common(a, ActivityParams)
    a.add_argument("--layer", type=int, default=None)
    a.add_argument("--neuron", type=int, default=None, help="max-activating contexts of this neuron (needs --layer)")
    a.add_argument("--k", type=int, default=10, help="contexts to show with --neuron (default 10)")
    a.set_defaults(func=run_activity)

    v = ns.add_parser("verify", help="clamp the most specialised neurons against controls; does p(label) rise?")
    _common(v, ClampParams)
    v.set_defaults(func=run_verify)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_decode(args: argparse.Namespace) -> int:
    from mechscope.analyses.neurons import DecodeParams, decode_neurons
    from mechscope.probes.models import model_id

    check_out_dir(args.out)
    if args.neuron is not None and args.layer is None:
        raise InputError("--neuron needs --layer.")
    model = load_model(args)
    params = params_from_args(DecodeParams, args, layers=None if args.layer is None else (args.layer,))
    res = decode_neurons(model, params, progress=True)
    if args.neuron is not None:
        print(f"{model_id(model)} L{args.layer}N{args.neuron} — {res.method}:")
        print(res.card(args.layer, args.neuron).to_string(index=False))
    else:
        n = res.top_ids.shape[0] * res.top_ids.shape[1]
        print(f"{model_id(model)}: decoded {n} neurons — {res.method}; the most specialised (top-1 − top-2 logit):")
        print(res.specialised(15).to_string(index=False))
    save_result(res, args.out)
    return 0


def run_search(args: argparse.Namespace) -> int:
    from mechscope.analyses.neurons import SearchParams, neurons_for_token
    from mechscope.probes.models import model_id

    check_out_dir(args.out)
    token = args.token
    if args.id:
        try:
            token = int(token)
        except ValueError:
            raise InputError(f"--id given but {args.token!r} is not an integer.") from None
    model = load_model(args)
    res = neurons_for_token(model, params_from_args(SearchParams, args, token=token))
    frame = res.table
    print(f"{model_id(model)}: neurons that most promote {frame['query_tokens'][0]!r} — {res.method}")
    print(frame.drop(columns=["query_tokens", "method"]).to_string(index=False))
    save_result(res, args.out)
    return 0


def run_activity(args: argparse.Namespace) -> int:
    from mechscope.analyses.neurons import ActivityParams, max_activating, neuron_activity
    from mechscope.probes.models import model_id

    check_out_dir(args.out)
    if args.neuron is not None and args.layer is None:
        raise InputError("--neuron needs --layer.")
    model = load_model(args)
    if args.neuron is not None:
        res = max_activating(model, args.layer, args.neuron, text_set=args.text_set, n_texts=args.n_texts,
                             max_tokens=args.max_tokens, k=args.k, progress=True)
        print(f"{model_id(model)} L{args.layer}N{args.neuron}: top {args.k} of {len(res.activations)} tokens")
        for row in res.contexts.itertuples():
            print(f"{row.rank:>3}  {row.activation:8.3f}  {row.context!r}")
    else:
        params = params_from_args(ActivityParams, args, layers=None if args.layer is None else (args.layer,))
        res = neuron_activity(model, params, progress=True)
        print(f"{model_id(model)}: {res.n_tokens} tokens, fires at |activation| > {params.threshold:g}; "
              "neurons per category and layer:")
        print(res.counts().to_string(index=False))
    save_result(res, args.out)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from mechscope.analyses.neurons import ClampParams, clamp_verification
    from mechscope.probes.models import model_id

    check_out_dir(args.out)
    model = load_model(args)
    res = clamp_verification(model, params_from_args(ClampParams, args))
    print(res.table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    lo, hi = res.effect_ci
    print(f"\n{model_id(model)}, labels: {res.method}: p(label) rose by more than {res.params.min_delta_p:g} for "
          f"{100 * res.fraction_up:.0f}% of {len(res.table)} neurons ({100 * res.pair_fraction_up:.0f}% of neuron×prompt "
          f"pairs); median Δp {res.median_delta:.4g}; effect over control {res.effect_over_control:+.4g} "
          f"[{lo:+.4g}, {hi:+.4g}]")
    save_result(res, args.out)
    return 0
