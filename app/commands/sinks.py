"""``mechscope sinks``, ``mechscope streaming-ppl`` and ``mechscope act``: attention sinks,
streaming perplexity and ACT calibration, each saved as a re-runnable Result.
Flags and their defaults come from each analysis' Params."""

from __future__ import annotations

from pathlib import Path

from mechscope.app.commands.common import add_model_out, add_params, check_out_dir, load_model, params_from_args, progress, save_result
from mechscope.app.specs import parse_heads, parse_layers
from mechscope.probes.errors import InputError


def register(sub) -> None:
    from mechscope.analyses.act import ACTParams
    from mechscope.analyses.sinks import SinkParams
    from mechscope.analyses.streaming import StreamingParams

    p = sub.add_parser("sinks", help="attention-sink metric, hidden sinks, extreme tokens, dormancy",
                       description="Gu et al.'s α_k and Sink_k^ε (with/without BOS, first token replaced), hidden "
                                   "sinks (ACT criterion, keys seen by ≥ min-queries queries), residual/value norms "
                                   "by position and head dormancy by domain over a shipped text set.")
    add_model_out(p)
    add_params(p, SinkParams)
    p.set_defaults(func=run_sinks)

    q = sub.add_parser("streaming-ppl", help="perplexity under full / window / sinks+window / recomputation",
                       description="StreamingLLM's comparison on a long text: per-token NLL under full attention, "
                                   "window-only and sinks+window KV caches, and sliding-window recomputation.")
    add_model_out(q)
    add_params(q, StreamingParams, skip=("text",))
    q.add_argument("--text-file", type=Path, default=None, help="score this UTF-8 file instead of --long-text")
    q.set_defaults(func=run_streaming)

    a = sub.add_parser("act", help="ACT calibration of hidden sinks: head search + held-out effect",
                       description="Yu et al.'s attention calibration: search heads on the calibration split "
                                   "(the reference's per-head protocol by default, or greedy) or give --head L:H; "
                                   "report the held-out effect with bootstrap CIs.")
    add_model_out(a)
    add_params(a, ACTParams, skip=("heads", "layers"))
    a.add_argument("--head", action="append", default=[], metavar="L:H", help="calibrate these heads (no search)")
    a.add_argument("--layers", default=None, help="restrict the search to these layers, e.g. 0-9 or 2,5,7")
    a.set_defaults(func=run_act)


def run_sinks(args) -> int:
    from mechscope.analyses.sinks import SinkParams, attention_sinks

    check_out_dir(args.out)
    params = params_from_args(SinkParams, args)
    res = attention_sinks(load_model(args), params, progress=progress("sinks"))
    rates = res.sink_rates().pivot(index="k", columns="variant", values="sink_rate")[list(res.variants)]
    print(f"Sink_k^{params.eps:g} (%) over {len(res.domains)} texts × first {params.max_tokens} tokens:")
    print(rates.round(1).to_string())
    save_result(res, args.out)
    return 0


def run_streaming(args) -> int:
    from mechscope.analyses.streaming import StreamingParams, streaming_perplexity

    check_out_dir(args.out)
    text = None
    if args.text_file is not None:
        try:
            text = args.text_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"Cannot read {args.text_file}: {exc}") from None
    params = params_from_args(StreamingParams, args, text=text)
    res = streaming_perplexity(load_model(args), params, progress=progress("streaming"))
    print(res.summary().round(3).to_string(index=False))
    save_result(res, args.out)
    return 0


def run_act(args) -> int:
    from mechscope.analyses.act import ACTParams, act_calibration

    check_out_dir(args.out)
    try:
        heads = tuple(parse_heads(args.head)) or None
    except InputError as exc:
        raise InputError(f"--head {exc}") from None
    layers = parse_layers(args.layers)
    params = params_from_args(ACTParams, args, heads=heads, layers=tuple(layers) if layers else None)
    res = act_calibration(load_model(args), params, progress=progress("ACT search"))
    s = res.summary
    print(f"heads: {', '.join(f'L{l}H{h}' for l, h in res.heads) or 'none kept'}")
    print(f"held-out Δ log p(answer) = {s['delta_logprob']:+.4f}  95% CI [{s['delta_logprob_ci'][0]:+.4f}, "
          f"{s['delta_logprob_ci'][1]:+.4f}]; accuracy {s['accuracy_base']:.3f} → {s['accuracy_act']:.3f}  ({s['verdict']})")
    save_result(res, args.out)
    return 0
