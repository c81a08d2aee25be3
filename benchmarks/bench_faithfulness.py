"""Benchmark for issue 8 (DeCoRe): ``python -m benchmarks.bench_faithfulness``.

Accuracy on the contextual-faithfulness set (``data/tasks/faithfulness.jsonl``: the context
overrides the model's prior answer; :mod:`analyses.faithfulness`) of greedy decoding vs
DeCoRe (REFERENCES §6: top-``--n-heads`` retrieval heads masked in the contrast model,
entropy-guided α and fixed α = 0.5), with 95% percentile bootstrap CIs over items and a
paired CI of the difference from greedy. Retrieval heads come from ``--heads L:H,...`` or
are detected on a small NIAH grid (``--detect-lengths``).

GPU (lent H200), the command for the lead::

    PYTHONUNBUFFERED=1 python -m benchmarks.bench_faithfulness --device cuda --n-heads 10 \\
        --detect-lengths 1000,2000 --out gpu_faithfulness.md

CPU smoke test (tiny)::

    python -m benchmarks.bench_faithfulness --items 3 --heads 17:4,21:7 --max-new-tokens 6
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import add_output_flags, machine_info, markdown_table, publish

HEADING = "DeCoRe: contextual faithfulness (issue 8)"


def run(args) -> str:
    from analyses.faithfulness import bootstrap_ci, evaluate, load_items
    from probes.decore import DeCoRe
    from probes.models import load

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    model = load(args.model, device=args.device).model
    if args.heads:
        heads = [tuple(int(x) for x in h.split(":")) for h in args.heads.split(",")]
        source = "given"
    else:
        from analyses.retrieval import RetrievalParams, retrieval_heads

        det = retrieval_heads(model, RetrievalParams(lengths=tuple(args.detect_lengths), proxy_seqs=0))
        heads = det.top(args.n_heads)
        source = f"top {args.n_heads} detected on lengths {', '.join(map(str, args.detect_lengths))} ({det.n_counted} counted tests)"
    items = load_items()[: args.items] if args.items else load_items()
    strategies = {"greedy": "greedy", "DeCoRe (entropy α)": DeCoRe(tuple(heads)), "DeCoRe (α = 0.5)": DeCoRe(tuple(heads), alpha=0.5)}
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
            f"Retrieval heads ({source}): {', '.join(f'L{l}H{h}' for l, h in heads)}. {wall:.0f} s.\n\n"
            + markdown_table(["decoding", "accuracy", "95% CI", "vs greedy (paired 95% CI)"], rows) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--heads", default="", help="retrieval heads L:H,... (default: detect)")
    ap.add_argument("--n-heads", type=int, default=10)
    ap.add_argument("--detect-lengths", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 2000])
    ap.add_argument("--items", type=int, default=0, help="use only the first N items (0: all)")
    ap.add_argument("--max-new-tokens", type=int, default=12)
    add_output_flags(ap)
    args = ap.parse_args(argv)
    publish(HEADING, run(args), args.out, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
