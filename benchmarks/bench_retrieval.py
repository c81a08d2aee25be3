"""Benchmark for retrieval heads: ``python -m benchmarks.bench_retrieval``.

**Detection scan vs the materialising step-by-step loop.** Both answer every NIAH test
greedily and score every head (docs/retrieval.md#retrieval-score):

* *baseline* — :func:`analyses.retrieval.reference_scores`: the reference's procedure
  without its patched attention kernels: no KV cache, at every step the whole text is run
  and every layer's full T×T attention pattern is captured (``output_attentions``), then
  per layer and head the top-1 of the last row and the copy check in Python loops;
* *fast* — :func:`analyses.retrieval.scan`: KV-cached greedy decoding of ``--batch-size``
  tests at a time as rows of one left-padded batch (sorted by length; finished rows leave
  the batch), a reducer on each layer's ``hook_pattern`` keeping one argmax per head of the
  last query (O(T) per layer; no T×T pattern outlives its layer).

The fast scan runs on every test of the grid. The baseline costs one full forward pass
with every pattern materialised per emitted token (31 min for one 1k test on the loaded
2-core box), so it runs on the first ``--baseline-tests`` tests only, optionally with
``--baseline-max-new`` new tokens — the fast scan is re-run on the same tests with the same
cap and must give identical answers and scores. The **extrapolated** baseline total is its
measured seconds per forward pass × the forward passes the baseline would need on the
whole grid (one per emitted token, counted from the fast scan's answers).
``--per-test N`` also runs the existing per-test loop (:func:`score_test`, one test per
batch) on the first N tests: identical answers/scores to the batched scan, and its speed.
Peak extra memory (kernel VmHWM, ``benchmarks.common.PeakMemory``, or
``torch.cuda.max_memory_allocated``) is measured over the whole fast scan.

``--full-grid`` = 3 needles × 20 lengths up to the model's context × 10 depths = 600 tests.
A test counts (and its answer is correct) when the response's ROUGE-1 recall of the needle's
answer part exceeds 0.5; copies score on the answer part's tokens only (docs/retrieval.md#retrieval-score).
``--out FILE`` writes the markdown section to FILE; ``--results`` also writes it into
RESULTS.md. Threads: 1 on CPU (shared 2-core dev box).

On a GPU (≈ 100–150 s on an H200)::

    PYTHONUNBUFFERED=1 python -m benchmarks.bench_retrieval --device cuda --full-grid --batch-size 48 \\
        --baseline-tests 1 --per-test 2 --out gpu_retrieval.md --verbose

``--masking`` adds the causal check on the detected ranking (``retrieval_masking``: top-k
heads vs k random heads from outside the top ``--random-outside-top`` (the reference: 100),
``--seeds`` draws, k in ``--ks``), batched the same way, once per ``--mask-scope``
(``decode``: the reference's masking while decoding only; ``prompt_and_decode``: the prompt
masked too). GPU command for the curves in both scopes::

    PYTHONUNBUFFERED=1 python -m benchmarks.bench_retrieval --device cuda --lengths 1000,2000 \
        --depths 0.1,0.5,0.9 --needles 0,1,2 --batch-size 48 --baseline-tests 0 --masking \
        --ks 0,2,5,10,20,40 --seeds 5 --mask-scope decode,prompt_and_decode --out gpu_masking.md --verbose
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from benchmarks.common import PeakMemory, add_output_flags, machine_info, markdown_table, publish

HEADING = "Retrieval heads"


def full_grid_lengths(model, n: int = 20, lo: int = 1000, margin: int = 120) -> tuple[int, ...]:
    """n lengths from ``lo`` to n_ctx − margin (prompt template + 50 new tokens fit)."""
    hi = model.cfg.n_ctx - margin
    return tuple(int(x) for x in np.round(np.linspace(lo, hi, n)))


def run(args) -> str:
    from mechscope.probes.niah import GridParams, grid_tests
    from mechscope.analyses.retrieval import reference_scores, scan, score_test
    from mechscope.probes.models import load

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
    dev = "cuda" if cuda else None
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    say = (lambda *a: print(*a, flush=True)) if args.verbose else (lambda *a: None)
    t_start = time.perf_counter()
    list(scan(model, built[:1], 4, batch_size=1))  # warm-up (kernels, rotary tables)
    say(f"{len(built)} tests, lengths {min(lengths)}–{max(lengths)}, batch {args.batch_size} rows")

    def prog(done, total):
        say(f"fast scan: {done}/{total} tests, {time.perf_counter() - t0:.1f} s")

    fast = {}
    with PeakMemory(device=dev) as mem:
        sync()
        t0 = time.perf_counter()
        for i, ans, sc in scan(model, built, args.max_new_tokens, args.batch_size, args.prefill_rows, progress=prog):
            fast[i] = (ans, sc)
        sync()
        fast_s = time.perf_counter() - t0
    answers = [fast[i][0] for i in range(len(built))]
    scores = np.stack([fast[i][1] for i in range(len(built))])
    ok = np.array([a.recall > grid.recall_threshold for a in answers])
    head = scores[ok].mean(0) if ok.any() else np.zeros((L, H))
    n_forwards = sum(len(a.new_tokens) for a in answers)
    of_needle = {n: [j for j, (t, _) in enumerate(built) if t.needle_index == n] for n in needles}
    per_needle = ", ".join(f"{n}: {int(ok[js].sum())}/{len(js)}" for n, js in of_needle.items())
    spans = ", ".join(f"needle {n}: {built[js[0]][0].answer_end - built[js[0]][0].answer_start}"
                      for n, js in of_needle.items())
    info = machine_info()
    rows = [
        ["tests", f"{len(built)} ({len(needles)} needles × {len(lengths)} lengths {min(lengths)}–{max(lengths)} × "
                  f"{len(depths)} depths), max {args.max_new_tokens} new tokens"],
        ["fast scan (batched): total", f"**{fast_s:.1f} s** ({len(built) / fast_s:.2f} tests/s; batch {args.batch_size} "
                                       f"rows, prefill {args.prefill_rows} row(s); {n_forwards} tokens emitted)"],
        ["peak extra memory, whole fast scan", f"{mem.peak_extra_mb:.0f} MB ({mem.method})"],
        ["counted tests = correct answers (ROUGE-1 recall of the answer part > 0.5)",
         f"{int(ok.sum())} / {len(built)} (per needle: {per_needle})"],
        ["answer-part tokens (copy credit 1/|span|)", spans],
        ["heads > 0.1", f"{int((head > 0.1).sum())} / {L * H} ({100 * (head > 0.1).mean():.1f}%)"],
    ]
    n_per = min(args.per_test, len(built))
    if n_per:
        sync()
        t1 = time.perf_counter()
        same_pt = []
        for i in range(n_per):
            a, sc = score_test(model, *built[i], args.max_new_tokens)
            same_pt.append(a == answers[i] and np.array_equal(sc, scores[i]))
            say(f"per-test loop {i + 1}/{n_per}: identical to batched {same_pt[-1]}")
        sync()
        pt_s = time.perf_counter() - t1
        share = sum(len(answers[i].new_tokens) for i in range(n_per)) / n_forwards
        rows += [[f"per-test loop (score_test) on the first {n_per} tests", f"{pt_s:.1f} s; identical answers and "
                  f"scores to the batched scan: {sum(same_pt)} / {n_per}"],
                 ["per-test loop extrapolated to the grid (by tests)", f"{pt_s * len(built) / n_per:.0f} s "
                  f"(batched is {pt_s * len(built) / n_per / fast_s:.1f}× faster; by emitted tokens "
                  f"{pt_s / share:.0f} s) — extrapolated"]]
    n_base = min(args.baseline_tests, len(built))
    if n_base:
        cap = args.baseline_max_new or args.max_new_tokens
        sub = built[:n_base]
        sync()
        t1 = time.perf_counter()
        capped = {i: (a, sc) for i, a, sc in scan(model, sub, cap, args.batch_size, args.prefill_rows)}
        sync()
        fast_cap_s = time.perf_counter() - t1
        base_s, same, base_fw = 0.0, [], 0
        for i, (t, nd) in enumerate(sub):
            with PeakMemory(device=dev) as mb:
                sync()
                t1 = time.perf_counter()
                ref_ans, ref = reference_scores(model, t, nd, cap)
                sync()
                base_s += time.perf_counter() - t1
            base_fw += len(ref_ans.new_tokens)
            same.append(ref_ans == capped[i][0] and np.array_equal(ref, capped[i][1]))
            say(f"baseline {i + 1}/{n_base}: {len(ref_ans.new_tokens)} steps, identical {same[-1]}")
        per_fw = base_s / base_fw
        extrap = per_fw * n_forwards
        rows += [
            [f"baseline (materialising loop) on the first {n_base} test(s), ≤ {cap} new tokens",
             f"{base_s:.1f} s ({base_fw} forward passes, {per_fw:.2f} s each); peak extra memory {mb.peak_extra_mb:.0f} MB"],
            ["fast scan on the same test(s), same cap", f"{fast_cap_s:.1f} s → **{base_s / fast_cap_s:.1f}×** on the shared tests"],
            ["identical answers and scores (baseline vs fast, shared tests)", f"{sum(same)} / {n_base}"],
            ["baseline extrapolated to the whole grid (s per forward × tokens emitted)",
             f"{extrap:.0f} s → **{extrap / fast_s:.1f}×** the fast scan (extrapolated)"],
        ]
    T = max(t.prompt_len for t, _ in built)
    rows.append(["attention kept per step (T = %d)" % T,
                 f"baseline {L * H * T * T * 4 / 2**20:.0f} MB (every layer's T×T, float32); "
                 f"fast {L * H * 8} B per row (one int64 per head) + one layer's last-query pattern row, from q and k, while that layer runs"])
    rows.append(["wall time of the benchmark", f"{time.perf_counter() - t_start:.0f} s"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    body = (f"Machine: {info.get('cpu')}, {info.get('cores')} cores, torch threads {torch.get_num_threads()}, "
            f"device {args.device}; model {args.model}; load average at the end {load:.1f}"
            + (" (shared, loaded box: ratios are measured in the same run)" if not cuda else "") + ".\n\n"
            + markdown_table(["quantity", "value"], rows) + "\n")
    order = sorted(((l, h) for l in range(L) for h in range(H)), key=lambda lh: (-head[lh], lh))
    body += "\nTop heads: " + ", ".join(f"L{l}H{h} {head[l, h]:.3f}" for l, h in order[:12]) + "\n"
    if args.masking:
        body += masking(model, grid, order, args)
    return body


def masking(model, grid, order, args) -> str:
    """The causal check on the detected ranking: top-k retrieval heads vs k random heads
    outside the top ``--random-outside-top``, ``--seeds`` draws, on the NIAH grid of
    ``--masking-lengths``, once per ``--mask-scope``."""
    from mechscope.analyses.retrieval import MaskingParams, retrieval_masking

    ks = tuple(args.ks)
    lengths = tuple(args.masking_lengths) if args.masking_lengths else grid.lengths
    n_tests = len(lengths) * len(grid.depths) * len(grid.needles)
    out = ""
    for scope in args.mask_scope:
        mp = MaskingParams(lengths=lengths, depths=grid.depths, needles=grid.needles, max_new_tokens=grid.max_new_tokens,
                           ks=ks, seeds=args.seeds, heads=tuple(order), batch_size=args.batch_size,
                           prefill_rows=args.prefill_rows, mask_scope=scope, random_outside_top=args.random_outside_top)
        t0 = time.perf_counter()
        res = retrieval_masking(model, mp, progress=(lambda d, t: print(f"masking ({scope}) {d}/{t}", flush=True))
                                if args.verbose else None)
        s = res.summary()
        rows = [[int(r.k), r.which, f"{r['mean']:.3f}", "" if np.isnan(r['std']) else f"{r['std']:.3f}",
                 f"{r['min']:.3f}–{r['max']:.3f}", int(r.n)] for _, r in s.iterrows()]
        where = ("during decoding only (prompt prefilled unmasked; the reference)" if scope == "decode"
                 else "on the prompt and during decoding")
        out += (f"\nMasking curves, heads masked {where} ({n_tests} NIAH tests per configuration, lengths "
                f"{', '.join(map(str, lengths))}; random heads {res.random_pool}; {time.perf_counter() - t0:.0f} s):\n\n"
                + markdown_table(["k", "heads masked", "accuracy mean", "std", "min–max", "draws"], rows) + "\n")
    return out


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
    ap.add_argument("--batch-size", type=int, default=8, help="NIAH tests decoded together (rows of one batch)")
    ap.add_argument("--prefill-rows", type=int, default=1, help="equal-length prompts prefilled together")
    ap.add_argument("--baseline-tests", type=int, default=1, help="run the materialising baseline on the first N tests")
    ap.add_argument("--baseline-max-new", type=int, default=None,
                    help="new-token cap for the baseline comparison (applied to both; default --max-new-tokens)")
    ap.add_argument("--no-baseline", dest="baseline_tests", action="store_const", const=0, help="no baseline tests")
    ap.add_argument("--per-test", type=int, default=0, help="also run the per-test loop on the first N tests")
    ap.add_argument("--masking", action="store_true", help="also run the masking curves on the detected ranking")
    ap.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",")], default=[0, 2, 5, 10, 20, 40])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--masking-lengths", type=lambda s: [int(x) for x in s.split(",")], default=None,
                    help="context lengths for the masking grid (default: the detection grid's)")
    ap.add_argument("--mask-scope", type=lambda s: [x for x in s.split(",") if x], default=["decode"],
                    help="decode (the reference) and/or prompt_and_decode, comma-separated")
    ap.add_argument("--random-outside-top", type=int, default=100,
                    help="random heads come from outside the top N ranked heads (the reference: 100)")
    add_output_flags(ap)
    args = ap.parse_args(argv)
    publish(HEADING, run(args), args.out, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
