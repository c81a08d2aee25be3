"""RazorAttention benchmark: ``python -m benchmarks.bench_razor``.

NIAH accuracy vs the fraction of KV memory kept, for RazorAttention
(:class:`probes.razor.RazorAttention`: the top-m retrieval **KV heads** keep their full
cache, the others sinks + a recent buffer + one compensation token) against a uniform,
head-agnostic sinks + fixed-window cache holding the same number of entries or fewer
(:func:`probes.razor.uniform_window_for`: same masking implementation, no retrieval heads,
no compensation). Both evict by masking (positions unchanged, every prompt token sees only
what the policy keeps); the memory column is the exact entry count a real cache would hold
at the end of each prompt, averaged over the tests.

The streaming heads' buffer (``--buffer``, one or both, comma-separated): ``ratio`` is the
paper's L_h = max(S0, ⌈N / C⌉) with S0 = ``--window`` and C = ``--compression-ratio``;
``fixed`` is ``--window`` recent tokens whatever the length. Every table row names the
buffer it measures.

Retrieval heads are detected first on ``--detect-lengths`` (Wu et al.'s retrieval score,
``retrieval_heads``); a KV head's score is the max over its query heads (GQA: SmolLM2 has 3
query heads per KV head). m runs over ``--kv-heads`` (counts of full KV heads; 0 = pure
streaming heads). ``--no-compensation`` adds a Razor column without the compensation token
(ablation).

**Batched.** The tests of one prompt length (one needle and context length: its depths)
run with every policy as rows of one batch (``--rows`` at a time), each row under its own
policy's hooks (:func:`probes.batched_greedy.greedy_rows` with ``row_hooks``; rows of equal
length, so no padding), the same greedy procedure as ``answer(..., kv_policy=policy)``
(``tests/unit/test_batched_greedy.py``). The detection scan is batched too (``--batch-size``).

GPU, both buffers in one run (27 tests × (1 + 2 buffers × 6 m × 2 policies) = 675 answers,
plus the detection scan)::

    PYTHONUNBUFFERED=1 python -m benchmarks.bench_razor --device cuda --lengths 1000,2000,4000 --depths 0,0.5,1 \\
        --needles 0,1,2 --detect-lengths 1000,2000 --kv-heads 0,3,9,18,45,90 --window 64 --buffer ratio,fixed \\
        --compression-ratio 5 --batch-size 48 --rows 48 --out gpu_razor.md --verbose

CPU smoke test (tiny)::

    python -m benchmarks.bench_razor --lengths 200 --depths 0.5 --needles 0 --detect-lengths 200 \\
        --kv-heads 0,9 --window 16 --buffer ratio,fixed --max-new-tokens 12
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from benchmarks.common import add_output_flags, machine_info, markdown_table, publish

HEADING = "RazorAttention: NIAH accuracy vs KV memory"


def evaluate(model, built, configs, args, thr, say):
    """NIAH correctness (key-word recall > ``thr``) and KV fraction of every (config, test),
    every policy × test of one prompt length as rows of shared batches
    (:func:`analyses.kv_curve.answers_under_policies`)."""
    from mechscope.analyses.kv_curve import answers_under_policies

    done = [0]

    def tick(k):
        done[0] += k
        say(f"{done[0]} / {len(configs) * len(built)} answers")

    answers, frac = answers_under_policies(model, built, [c[2] for c in configs], args.max_new_tokens, args.rows,
                                           args.prefill_rows, tick)
    return [[a.recall > thr for a in row] for row in answers], frac


def run(args) -> str:
    from mechscope.analyses.kv_curve import kv_ranking
    from mechscope.probes.niah import GridParams, grid_tests
    from mechscope.analyses.retrieval import RetrievalParams, retrieval_heads
    from mechscope.probes.models import load
    from mechscope.probes.razor import RazorAttention, n_kv_heads, uniform_window_for

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    model = load(args.model, device=args.device).model
    t0 = time.perf_counter()
    det = retrieval_heads(model, RetrievalParams(lengths=tuple(args.detect_lengths), depths=tuple(args.depths),
                                                 needles=tuple(args.needles), max_new_tokens=args.max_new_tokens,
                                                 proxy_seqs=0, batch_size=args.batch_size))
    t_detect = time.perf_counter() - t0
    ranking = kv_ranking(det.head_scores, model)
    n_kv = model.cfg.n_layers * n_kv_heads(model)
    grid = GridParams(lengths=tuple(args.lengths), depths=tuple(args.depths), needles=tuple(args.needles),
                      max_new_tokens=args.max_new_tokens)
    built = grid_tests(model, grid)
    thr = grid.recall_threshold

    say = (lambda *a: print(*a, flush=True)) if args.verbose else (lambda *a: None)
    configs: list[tuple[str, int, object]] = [("full", n_kv, None)]  # (column, m, policy or policy_for(test))
    variants = []  # (buffer, label, [config index of each m's razor column])
    for buffer in args.buffer:
        proto = RazorAttention((), n_sink=args.n_sink, window=args.window, buffer=buffer,
                               compression_ratio=args.compression_ratio)
        starts = []
        for m in args.kv_heads:
            m = min(m, n_kv)
            heads = tuple((l, k) for l, k, _ in ranking[:m])
            razor = dataclasses.replace(proto, heads=heads)
            starts.append((m, len(configs)))
            configs.append(("razor", m, razor))
            configs.append(("uniform", m, lambda t, razor=razor: uniform_window_for(model, razor, t.prompt_len)))
            if args.no_compensation:
                configs.append(("bare", m, dataclasses.replace(razor, compensation=False)))
        variants.append((buffer, proto.describe_buffer(), starts))
    t1 = time.perf_counter()
    correct, frac = evaluate(model, built, configs, args, thr, say)
    rows = [["full cache", "", n_kv, "1.000", f"{np.mean(correct[0]):.3f}", "", ""]]
    for buffer, label, starts in variants:
        for m, c in starts:
            r_acc, u_acc = np.mean(correct[c]), np.mean(correct[c + 1])
            rows.append([f"razor ({label}), top {m} KV heads full", buffer, m,
                         f"{np.mean(frac[c]):.3f} (uniform {np.mean(frac[c + 1]):.3f})", f"{r_acc:.3f}", f"{u_acc:.3f}",
                         f"{np.mean(correct[c + 2]):.3f}" if args.no_compensation else ""])
    t_eval = time.perf_counter() - t1
    info = machine_info()
    lengths, depths, needles = grid.lengths, grid.depths, grid.needles
    buffers = "; ".join(f"`{b}`: {label}" for b, label, _ in variants)
    body = (f"Machine: {info.get('cpu')}, {info.get('cores')} cores, torch threads {torch.get_num_threads()}, "
            f"device {args.device}; model {args.model}. NIAH grid: {len(built)} tests ({len(needles)} needles × "
            f"lengths {', '.join(map(str, lengths))} × {len(depths)} depths), correct = recall of the answer's key words (those the question lacks) > {thr}. "
            f"Streaming KV heads keep S = {args.n_sink} sinks + a recent buffer (+1 compensation token) — {buffers} "
            f"(N: tokens in the cache); the uniform cache keeps the same or fewer entries on every KV head (fixed window), "
            f"no compensation. Retrieval heads "
            f"detected on lengths {', '.join(map(str, args.detect_lengths))} ({det.n_counted} counted tests, "
            f"{t_detect:.0f} s); evaluation {t_eval:.0f} s ({len(configs) * len(built)} answers).\n\n"
            + markdown_table(["policy", "buffer", "full KV heads", "KV memory kept (mean over tests)", "NIAH acc (razor)",
                              "NIAH acc (uniform, same memory)", "razor w/o compensation"], rows) + "\n")
    body += "\nKV-head ranking (top 12): " + ", ".join(f"L{l}K{k} {s:.3f}" for l, k, s in ranking[:12]) + "\n"
    return body


def main(argv=None) -> int:
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731

    def buffers(text: str) -> list[str]:
        got = [b.strip() for b in text.split(",") if b.strip()]
        if not got or any(b not in ("ratio", "fixed") for b in got) or len(set(got)) < len(got):
            raise argparse.ArgumentTypeError(f"expected ratio, fixed or ratio,fixed, not {text!r}")
        return got

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lengths", type=ints, default=[1000, 2000])
    ap.add_argument("--depths", type=lambda s: [float(x) for x in s.split(",")], default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--needles", type=ints, default=[0, 1, 2])
    ap.add_argument("--detect-lengths", type=ints, default=[1000, 2000])
    ap.add_argument("--kv-heads", type=ints, default=[0, 3, 9, 18, 45, 90], help="numbers of full KV heads")
    ap.add_argument("--n-sink", type=int, default=4)
    ap.add_argument("--window", type=int, default=64, help="the minimum buffer S0 (ratio) or the whole buffer (fixed)")
    ap.add_argument("--buffer", type=buffers, default=["ratio"],
                    help="streaming heads' buffer(s), comma-separated: ratio = max(S0, N/C) (the paper's), fixed = W")
    ap.add_argument("--compression-ratio", type=float, default=5.0, help="C of the ratio buffer")
    ap.add_argument("--max-new-tokens", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=8, help="NIAH tests per batch in the detection scan")
    ap.add_argument("--rows", type=int, default=64, help="rows (test × policy) decoded together in the evaluation")
    ap.add_argument("--prefill-rows", type=int, default=1, help="equal-length prompts prefilled together")
    ap.add_argument("--no-compensation", action="store_true", help="also run Razor without the compensation token")
    add_output_flags(ap)
    args = ap.parse_args(argv)
    publish(HEADING, run(args), args.out, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
