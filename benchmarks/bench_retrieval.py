"""Benchmark for issue 8 (retrieval heads): ``python -m benchmarks.bench_retrieval``.

**Detection scan vs the materialising step-by-step loop.** For every test of a NIAH grid,
both procedures answer greedily and score every head (REFERENCES §5):

* *baseline* — :func:`analyses.retrieval.reference_scores`: the reference's procedure
  without its patched attention kernels: no KV cache, at every step the whole text is run
  and every layer's full T×T attention pattern is captured (``output_attentions``), then
  per layer and head the top-1 of the last row and the copy check in Python loops;
* *fast* — :func:`analyses.retrieval.score_test`: KV-cached greedy decoding with a reducer
  on each layer's ``hook_pattern`` that keeps one argmax per head of the last query and
  drops the pattern (O(T) per layer; no T×T pattern outlives its layer).

Both run in the same process, test by test (interleaved), and must give identical scores
and answers on every test. Peak extra memory (kernel VmHWM, ``benchmarks.common.PeakMemory``,
or ``torch.cuda.max_memory_allocated`` on a GPU) is measured on the first test.

``--no-baseline`` runs the fast scan only (the full reference-size grid on the GPU:
``--full-grid`` = 3 needles × 20 lengths up to the model's context × 10 depths = 600 tests)
and reports tests/s, peak memory, counted tests and the fraction of heads above 0.1.
``--out FILE`` writes the markdown section to FILE; ``--results`` also writes it into
RESULTS.md. Threads: 1 on CPU (shared 2-core dev box).

GPU (lent H200), the command for the lead::

    PYTHONUNBUFFERED=1 python -m benchmarks.bench_retrieval --device cuda --full-grid --no-baseline \\
        --baseline-tests 3 --masking --masking-lengths 1000,2000,4000 --out gpu_retrieval.md

``--masking`` adds the causal check on the detected ranking (``retrieval_masking``: top-k
heads vs k random heads outside the top max(k), ``--seeds`` draws, k in ``--ks``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import PeakMemory, add_output_flags, machine_info, markdown_table, publish

HEADING = "Retrieval heads (issue 8)"


def full_grid_lengths(model, n: int = 20, lo: int = 1000, margin: int = 120) -> tuple[int, ...]:
    """n lengths from ``lo`` to n_ctx − margin (prompt template + 50 new tokens fit)."""
    hi = model.cfg.n_ctx - margin
    return tuple(int(x) for x in np.round(np.linspace(lo, hi, n)))


def run(args) -> str:
    from analyses.niah import GridParams, grid_tests
    from analyses.retrieval import reference_scores, score_test
    from probes.models import load

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    model = load(args.model, device=args.device).model
    lengths = full_grid_lengths(model) if args.full_grid else tuple(args.lengths)
    depths = tuple(np.round(np.linspace(0, 1, 10), 3)) if args.full_grid else tuple(args.depths)
    needles = (0, 1, 2) if args.full_grid else tuple(args.needles)
    grid = GridParams(lengths=lengths, depths=depths, needles=needles, max_new_tokens=args.max_new_tokens)
    built = grid_tests(model, grid)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fast_s, base_s, same, counted, per = [], [], [], [], []
    mem_fast = mem_base = float("nan")
    n_base = len(built) if args.baseline else min(args.baseline_tests, len(built))
    score_test(model, *built[0], args.max_new_tokens)  # warm-up
    t_all = time.perf_counter()
    for i, (t, nd) in enumerate(built):
        with PeakMemory(device="cuda" if cuda else None) as m:
            sync()
            t0 = time.perf_counter()
            ans, sc = score_test(model, t, nd, args.max_new_tokens)
            sync()
            fast_s.append(time.perf_counter() - t0)
        if i == 0:
            mem_fast = m.peak_extra_mb
        counted.append(ans.recall > grid.recall_threshold)
        per.append(sc)
        if i < n_base:
            with PeakMemory(device="cuda" if cuda else None) as m:
                sync()
                t0 = time.perf_counter()
                ref_ans, ref = reference_scores(model, t, nd, args.max_new_tokens)
                sync()
                base_s.append(time.perf_counter() - t0)
            if i == 0:
                mem_base = m.peak_extra_mb
            same.append(ref_ans.new_tokens == ans.new_tokens and np.array_equal(ref, sc))
        if args.verbose:
            print(f"[{i + 1}/{len(built)}] n={t.length} d={t.depth:.2f} needle {t.needle_index}: fast {fast_s[-1]:.2f}s"
                  + (f", baseline {base_s[-1]:.2f}s, identical {same[-1]}" if i < n_base else "")
                  + f", recall {ans.recall:.2f}", flush=True)
    wall = time.perf_counter() - t_all
    scores = np.stack(per)
    ok = np.array(counted)
    head = scores[ok].mean(0) if ok.any() else np.zeros((L, H))
    info = machine_info()
    rows = [
        ["tests", f"{len(built)} ({len(needles)} needles × {len(lengths)} lengths {min(lengths)}–{max(lengths)} × "
                  f"{len(depths)} depths)"],
        ["fast scan: total / per test", f"{sum(fast_s):.1f} s / {np.mean(fast_s):.2f} s ({len(built) / sum(fast_s):.2f} tests/s)"],
        ["wall time (incl. baseline)", f"{wall:.1f} s"],
        ["counted tests (ROUGE-1 recall > 0.5)", f"{int(ok.sum())} / {len(built)}"],
        ["heads > 0.1", f"{int((head > 0.1).sum())} / {L * H} ({100 * (head > 0.1).mean():.1f}%)"],
        ["peak extra memory, first test: fast", f"{mem_fast:.0f} MB"],
    ]
    if base_s:
        k = len(base_s)
        rows += [
            [f"baseline on the first {k} tests: total", f"{sum(base_s):.1f} s"],
            [f"fast on the same {k} tests", f"{sum(fast_s[:k]):.1f} s"],
            ["speed-up (baseline / fast)", f"**{sum(base_s) / sum(fast_s[:k]):.1f}×**"],
            ["identical scores and answers", f"{sum(same)} / {k} tests"],
            ["peak extra memory, first test: baseline", f"{mem_base:.0f} MB"],
        ]
    T = max(t.prompt_len for t, _ in built)
    rows.append(["attention kept per step (T = %d)" % T,
                 f"baseline {L * H * T * T * 4 / 2**20:.0f} MB (every layer's T×T, float32); "
                 f"fast {L * H * 8} B (one int64 per head) + one layer's pattern while that layer runs"])
    body = (f"Machine: {info.get('cpu')}, {info.get('cores')} cores, torch threads {torch.get_num_threads()}, "
            f"device {args.device}; model {args.model}.\n\n" + markdown_table(["quantity", "value"], rows) + "\n")
    order = sorted(((l, h) for l in range(L) for h in range(H)), key=lambda lh: (-head[lh], lh))
    body += "\nTop heads: " + ", ".join(f"L{l}H{h} {head[l, h]:.3f}" for l, h in order[:12]) + "\n"
    if args.masking:
        body += masking(model, grid, order, args)
    return body


def masking(model, grid, order, args) -> str:
    """The causal check on the detected ranking: top-k retrieval heads vs k random heads
    outside the top max(k), ``--seeds`` draws, on the NIAH grid of ``--masking-lengths``."""
    from analyses.retrieval import MaskingParams, retrieval_masking

    ks = tuple(args.ks)
    lengths = tuple(args.masking_lengths) if args.masking_lengths else grid.lengths
    mp = MaskingParams(lengths=lengths, depths=grid.depths, needles=grid.needles, max_new_tokens=grid.max_new_tokens,
                       ks=ks, seeds=args.seeds, heads=tuple(order[: max(ks)]))
    t0 = time.perf_counter()
    res = retrieval_masking(model, mp, progress=(lambda d, t: print(f"masking {d}/{t}", flush=True)) if args.verbose else None)
    s = res.summary()
    rows = [[int(r.k), r.which, f"{r['mean']:.3f}", "" if np.isnan(r['std']) else f"{r['std']:.3f}",
             f"{r['min']:.3f}–{r['max']:.3f}", int(r.n)] for _, r in s.iterrows()]
    n_tests = len(lengths) * len(grid.depths) * len(grid.needles)
    return (f"\nMasking curves ({n_tests} NIAH tests per configuration, lengths {', '.join(map(str, lengths))}; "
            f"{time.perf_counter() - t0:.0f} s):\n\n"
            + markdown_table(["k", "heads masked", "accuracy mean", "std", "min–max", "draws"], rows) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[2000])
    ap.add_argument("--depths", type=lambda s: [float(x) for x in s.split(",")], default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--needles", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2, 3])
    ap.add_argument("--max-new-tokens", type=int, default=50)
    ap.add_argument("--full-grid", action="store_true", help="3 needles × 20 lengths up to n_ctx × 10 depths")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false", help="fast scan only")
    ap.add_argument("--baseline-tests", type=int, default=0, help="with --no-baseline: still run the baseline on N tests")
    ap.add_argument("--masking", action="store_true", help="also run the masking curves on the detected ranking")
    ap.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",")], default=[0, 2, 5, 10, 20, 40])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--masking-lengths", type=lambda s: [int(x) for x in s.split(",")], default=None,
                    help="context lengths for the masking grid (default: the detection grid's)")
    add_output_flags(ap)
    args = ap.parse_args(argv)
    publish(HEADING, run(args), args.out, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
