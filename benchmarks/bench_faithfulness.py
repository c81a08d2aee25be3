"""Benchmark for DeCoRe: ``python -m benchmarks.bench_faithfulness``.

Accuracy on the contextual-faithfulness set (``data/tasks/faithfulness.jsonl``: the context
overrides the model's prior answer; :mod:`analyses.faithfulness`) of greedy decoding vs
DeCoRe (docs/retrieval.md#decore: the top-N retrieval heads masked in the contrast model, entropy-guided
α and fixed α = 0.5), with 95% percentile bootstrap CIs over items and a paired CI of the
difference from greedy. ``--n-heads`` takes one or several N (default 50, the reference's
``num_retrieval_heads``); ``--mask-scope`` one or several of ``decode`` (default: the
reference's — prompt prefilled unmasked, heads masked from the last prompt token on) and
``prompt_and_decode`` (the prompt masked too). Retrieval heads come from ``--heads L:H,...``
(best first) or are detected on a small NIAH grid (``--detect-lengths``).

GPU (H100/H200) (reference default N = 50 and N = 10, both
scopes)::

    PYTHONUNBUFFERED=1 python -m benchmarks.bench_faithfulness --device cuda --n-heads 10,50 \\
        --mask-scope decode,prompt_and_decode --detect-lengths 1000,2000 --out gpu_faithfulness.md

CPU smoke test (tiny)::

    python -m benchmarks.bench_faithfulness --items 3 --heads 17:4,21:7 --n-heads 2 --max-new-tokens 6
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import add_output_flags, machine_info, markdown_table, publish

HEADING = "DeCoRe: contextual faithfulness"


def _list(kind):
    return lambda s: [kind(x) for x in s.split(",") if x.strip()]


def run(args) -> str:
    from mechscope.analyses.faithfulness import evaluate, load_items
    from mechscope.probes.decore import DeCoRe
    from mechscope.probes.errors import InputError
    from mechscope.probes.interventions import check_scope
    from mechscope.probes.models import load
    from mechscope.probes.stats import bootstrap_ci

    for scope in args.mask_scope:
        check_scope(scope)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    model = load(args.model, device=args.device).model
    n_max = max(args.n_heads)
    if args.heads:
        ranked = [tuple(int(x) for x in h.split(":")) for h in args.heads.split(",")]
        if n_max > len(ranked):
            raise InputError(f"--n-heads {n_max} is more than the {len(ranked)} heads given with --heads.")
        source = "given"
    else:
        from mechscope.analyses.retrieval import RetrievalParams, retrieval_heads

        det = retrieval_heads(model, RetrievalParams(lengths=tuple(args.detect_lengths), proxy_seqs=0))
        ranked = det.top(n_max)
        source = (f"detected on lengths {', '.join(map(str, args.detect_lengths))} ({det.n_counted} counted tests; "
                  f"{len(det.retrieval_heads())} heads above {det.params.threshold:g})")
    items = load_items()[: args.items] if args.items else load_items()
    strategies = {"greedy": "greedy"}
    for n in args.n_heads:
        heads = tuple(ranked[:n])
        for scope in args.mask_scope:
            where = "decode-only masks" if scope == "decode" else "prompt + decode masks"
            strategies[f"DeCoRe top {n} (entropy α; {where})"] = DeCoRe(heads, mask_scope=scope)
            strategies[f"DeCoRe top {n} (α = 0.5; {where})"] = DeCoRe(heads, alpha=0.5, mask_scope=scope)
    t0 = time.perf_counter()
    acc = evaluate(model, strategies, items, max_new_tokens=args.max_new_tokens,
                   progress=(lambda d, t: print(f"{d}/{t}", flush=True)) if args.verbose else None)
    wall = time.perf_counter() - t0
    rows = []
    for label, x in acc.items():
        m, lo, hi = bootstrap_ci(x)
        if label == "greedy":
            diff = ""
        else:
            d, dlo, dhi = bootstrap_ci(x - acc["greedy"])
            diff = f"{d:+.3f} [{dlo:+.3f}, {dhi:+.3f}]"
        rows.append([label, f"{m:.3f}", f"[{lo:.3f}, {hi:.3f}]", diff])
    info = machine_info()
    return (f"Machine: {info.get('cpu')}, {info.get('cores')} cores, torch threads {torch.get_num_threads()}, "
            f"device {args.device}; model {args.model}. {len(items)} counterfactual items, greedy answers of up to "
            f"{args.max_new_tokens} tokens; faithful = first line names the context's answer and not the prior one. "
            f"Retrieval heads ({source}), best first: {', '.join(f'L{l}H{h}' for l, h in ranked)}. "
            + ("Decode-only masks: the prompt but its last token prefilled once unmasked, the masked branch continues "
               "from a copy of that cache (the reference's protocol). " if "decode" in args.mask_scope else "")
            + ("Prompt + decode masks: the masked branch masks the heads on the prompt too. "
               if "prompt_and_decode" in args.mask_scope else "")
            + f"{wall:.0f} s.\n\n"
            + markdown_table(["decoding", "accuracy", "95% CI", "vs greedy (paired 95% CI)"], rows) + "\n")


def main(argv=None) -> int:
    from mechscope.probes.decore import DEFAULT_HEADS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--heads", default="", help="retrieval heads L:H,... best first (default: detect)")
    ap.add_argument("--n-heads", type=_list(int), default=[DEFAULT_HEADS],
                    help=f"numbers of top heads masked, comma-separated (default {DEFAULT_HEADS}: the reference's)")
    ap.add_argument("--mask-scope", type=_list(str), default=["decode"],
                    help="decode (the reference) and/or prompt_and_decode, comma-separated")
    ap.add_argument("--detect-lengths", type=_list(int), default=[1000, 2000])
    ap.add_argument("--items", type=int, default=0, help="use only the first N items (0: all)")
    ap.add_argument("--max-new-tokens", type=int, default=12)
    add_output_flags(ap)
    args = ap.parse_args(argv)
    if not args.n_heads or min(args.n_heads) < 1:
        ap.error("--n-heads needs numbers >= 1")
    publish(HEADING, run(args), args.out, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
