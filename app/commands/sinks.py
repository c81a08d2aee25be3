"""``mechscope sinks``, ``mechscope streaming-ppl`` and ``mechscope act``: attention sinks,
streaming perplexity and ACT calibration (issue 3), each saved as a Result."""

from __future__ import annotations

import re
from pathlib import Path

from probes.errors import InputError

_HEAD_RE = re.compile(r"^(\d+):(\d+)$")


def register(sub) -> None:
    p = sub.add_parser("sinks", help="attention-sink metric, hidden sinks, extreme tokens, dormancy",
                       description="Gu et al.'s α_k and Sink_k^ε (with/without BOS, first token replaced), hidden "
                                   "sinks (ACT criterion), residual/value norms by position and head dormancy by "
                                   "domain over a shipped text set. Saves the Result (JSON, arrays, figures).")
    p.add_argument("--model", default=None, help="model name (default: the embedded smollm2-135m)")
    p.add_argument("--text-set", default="mixed", help="prose | code | numbers | mixed (default mixed)")
    p.add_argument("--n-texts", type=int, default=64, help="texts in all, taken evenly from the domains (default 64)")
    p.add_argument("--max-tokens", type=int, default=64, help="first T tokens of each text (default 64)")
    p.add_argument("--k", type=int, default=8, help="report α_k and Sink_k for k = 1..K (default 8)")
    p.add_argument("--eps", type=float, default=0.3, help="ε of Sink_k^ε (default 0.3)")
    p.add_argument("--variants", default="no_bos,bos,newline,space",
                   help="first-token variants, comma-separated (default all four)")
    p.add_argument("--dormant-threshold", type=float, default=0.9, help="dormancy threshold (default 0.9)")
    p.add_argument("--out", type=Path, required=True, help="directory to save the Result in")
    p.set_defaults(func=run_sinks)

    q = sub.add_parser("streaming-ppl", help="perplexity under full / window / sinks+window / recomputation",
                       description="StreamingLLM's comparison on a long text: per-token NLL under full attention, "
                                   "window-only and sinks+window KV caches, and sliding-window recomputation.")
    q.add_argument("--model", default=None, help="model name (default: the embedded smollm2-135m)")
    q.add_argument("--text", default="paradise_lost", help="shipped long text (default paradise_lost)")
    q.add_argument("--text-file", type=Path, default=None, help="use this UTF-8 file instead")
    q.add_argument("--n-tokens", type=int, default=2048, help="tokens of the text to score (default 2048)")
    q.add_argument("--sinks", type=int, default=4, help="S, sink tokens kept (default 4)")
    q.add_argument("--window", type=int, default=252, help="W, recent tokens kept (default 252)")
    q.add_argument("--recompute-every", type=int, default=8,
                   help="score every N-th position past the cache by recomputation (default 8; 1 = all)")
    q.add_argument("--out", type=Path, required=True, help="directory to save the Result in")
    q.set_defaults(func=run_streaming)

    a = sub.add_parser("act", help="ACT calibration of hidden sinks: head search + held-out effect",
                       description="Yu et al.'s attention calibration: search heads on the calibration split "
                                   "(or give --head L:H), report the held-out effect with bootstrap CIs.")
    a.add_argument("--model", default=None, help="model name (default: the embedded smollm2-135m)")
    a.add_argument("--head", action="append", default=[], metavar="L:H", help="calibrate these heads (no search)")
    a.add_argument("--layers", default=None, help="restrict the search to these layers, e.g. 0-9 or 2,5,7")
    a.add_argument("--max-candidates", type=int, default=30, help="candidate heads in the search (default 30)")
    a.add_argument("--beta", type=float, default=0.4, help="β, scale of hidden-sink columns (default 0.4)")
    a.add_argument("--out", type=Path, required=True, help="directory to save the Result in")
    a.set_defaults(func=run_act)


def _model(name):
    from probes.models import DEFAULT_MODEL, load

    return load(name or DEFAULT_MODEL).model


def _progress(desc: str):
    from tqdm.auto import tqdm

    bar = {"b": None}

    def cb(done: int, total: int) -> None:
        if bar["b"] is None:
            bar["b"] = tqdm(total=total, desc=desc, leave=False)
        bar["b"].n = done
        bar["b"].refresh()

    return cb


def _save(result, out: Path) -> None:
    from app.commands.next_token import check_out_dir

    check_out_dir(out)
    result.save(out, html=True)
    print(f"saved to {out}")


def run_sinks(args) -> int:
    from analyses.sinks import attention_sinks

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    model = _model(args.model)
    res = attention_sinks(model, text_set=args.text_set, n_texts=args.n_texts, max_tokens=args.max_tokens,
                          k_max=args.k, eps=args.eps, variants=variants, dormant_threshold=args.dormant_threshold,
                          progress=_progress("sinks"))
    rates = res.sink_rates().pivot(index="k", columns="variant", values="sink_rate")[list(res.variants)]
    print(f"Sink_k^{args.eps:g} (%) over {len(res.domains)} texts × first {args.max_tokens} tokens:")
    print(rates.round(1).to_string())
    _save(res, args.out)
    return 0


def run_streaming(args) -> int:
    from analyses.streaming import streaming_perplexity

    text = None
    if args.text_file is not None:
        try:
            text = args.text_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"Cannot read {args.text_file}: {exc}") from None
    model = _model(args.model)
    res = streaming_perplexity(model, text, long_text=args.text, n_tokens=args.n_tokens, n_sink=args.sinks,
                               window=args.window, recompute_every=args.recompute_every,
                               progress=_progress("streaming"))
    print(res.summary().round(3).to_string(index=False))
    _save(res, args.out)
    return 0


def parse_layers(spec: str | None):
    if spec is None:
        return None
    out = []
    for part in spec.split(","):
        part = part.strip()
        m = re.match(r"^(\d+)(?:-(\d+))?$", part)
        if not m:
            raise InputError(f"--layers {spec!r}: expected e.g. 0-9 or 2,5,7.")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        out.extend(range(lo, hi + 1))
    return out


def run_act(args) -> int:
    from analyses.act import act_calibration

    heads = []
    for h in args.head:
        m = _HEAD_RE.match(h.strip())
        if not m:
            raise InputError(f"--head {h!r}: expected LAYER:HEAD.")
        heads.append((int(m.group(1)), int(m.group(2))))
    model = _model(args.model)
    res = act_calibration(model, heads or None, layers=parse_layers(args.layers), beta=args.beta,
                          max_candidates=args.max_candidates, progress=_progress("ACT search"))
    s = res.summary
    print(f"heads: {', '.join(f'L{l}H{h}' for l, h in res.heads) or 'none kept'}")
    print(f"held-out Δ log p(answer) = {s['delta_logprob']:+.4f}  95% CI [{s['delta_logprob_ci'][0]:+.4f}, "
          f"{s['delta_logprob_ci'][1]:+.4f}]; accuracy {s['accuracy_base']:.3f} → {s['accuracy_act']:.3f}  ({s['verdict']})")
    _save(res, args.out)
    return 0
