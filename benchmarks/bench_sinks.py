"""Benchmarks for attention sinks: ``python -m benchmarks.bench_sinks``.

1. **Sink metric vs a plain forward pass**, over 256 texts × 64 tokens and one text of
   T = 2048 tokens. Both go through ``probes.capture.run`` with the same batches; the plain
   pass attaches no hook, the sink pass (``attention_sinks``, one variant, no norms) reduces
   every layer's pattern inside its hook. Time and peak extra memory from
   ``benchmarks.common.measure`` (variants round-robin, medians; peak = kernel VmHWM reset
   before each call, minus RSS at the call's start). Targets: ≤ 1.2× time, ≤ 1.3× memory.
2. **Sinks + window generation memory**: ``generate`` with ``SinkWindow(4, 60)`` for 1× and
   4× the cache (and a full cache beside it): the longest cache and the peak extra RSS must
   not grow with the length. Greedy samples of sinks + window and window-only at 4× the
   cache show coherence vs degradation.
3. **Streaming perplexity** (the four policies, 2048 tokens, S = 4, W = 252), unless
   ``--no-streaming``; ``--streaming-from DIR`` reads a saved StreamingResult instead.

``--quick`` runs small sizes and prints without writing RESULTS.md. Threads: 1 (the dev box
has 2 cores shared with other jobs; one thread per process keeps timings comparable).
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import machine_info, markdown_table, measure, write_section

HEADING = "Attention sinks"


def bench_metric(model, seqs, batch_size, rounds):
    from mechscope.analyses.sinks import attention_sinks
    from mechscope.probes import capture

    T = max(len(s) for s in seqs)
    variants = {
        "plain": lambda: capture.run(model, seqs, batch_size=batch_size),
        "sink": lambda: attention_sinks(model, seqs, k_max=8, max_tokens=T, variants=("no_bos",), norms=False,
                                        batch_size=batch_size),
    }
    return measure(variants, rounds=rounds, warmup=1)


def bench_generation(model, S, W, lengths):
    from mechscope.probes.decoding import generate
    from mechscope.probes.kv_policies import SinkWindow

    prompt = "The history of the old city begins with a small village by the river, where"
    rows = []
    for policy, name in ((SinkWindow(S, W), "sink_window"), ("full", "full")):
        for n in lengths:
            box = {}
            m = measure({name: lambda: box.setdefault("g", generate(model, prompt, max_new_tokens=n, kv_policy=policy,
                                                                     stop_at_eos=False))}, rounds=1, warmup=0)[name]
            rows.append((name, n, box["g"].max_cache_len_seen, f"{m.peak_mb:.1f}", f"{m.time:.1f}"))
    return rows


def samples(model, S, W, n):
    from mechscope.probes.decoding import generate
    from mechscope.probes.kv_policies import SinkWindow, WindowOnly

    prompt = "Once upon a time, in a small village at the edge of a great forest, there lived"
    out = []
    for policy in (SinkWindow(S, W), WindowOnly(S + W)):
        g = generate(model, prompt, max_new_tokens=n, kv_policy=policy, stop_at_eos=False)
        tail = g.text[-320:].replace("\n", " ⏎ ").replace("|", "/")
        out.append(f"- **{policy.name}** ({policy.describe()}; mean log p of its greedy tokens "
                   f"{sum(g.logprobs) / len(g.logprobs):.2f}): …{tail}")
    return out


def sinks_section(res) -> list[str]:
    parts: list[str] = []
    p = res.params
    parts += ["### Sink metric on smollm2-135m (Gu et al.)", "",
              f"{len(res.domains)} texts ({p.text_set}: prose, code, numbers evenly), first {p.max_tokens} tokens, "
              f"ε = {p.eps}; Sink_k^ε in % over texts × {res.alpha.shape[2]} layers × {res.alpha.shape[3]} query heads. "
              "no_bos = as the model is used (no BOS); bos = <|im_start|> prepended; newline/space = first token replaced.", ""]
    rates = res.sink_rates().pivot(index="k", columns="variant", values="sink_rate")[list(res.variants)]
    parts.append(markdown_table(["k"] + list(res.variants),
                                [[k] + [f"{v:.1f}" for v in row] for k, row in zip(rates.index, rates.values)]))
    cls = res.hidden_by_class()
    parts += ["", "Hidden sinks (ACT criterion, mean received attention > 0.1, not the first sink), by token class "
              f"(fraction of occurrences at positions ≥ 2, seen by ≥ {p.min_queries} queries, that are a hidden sink in ≥ 1 head):", "",
              markdown_table(("class", "occurrences", "hidden-sink fraction"),
                             [(r["class"], int(r.occurrences), f"{r.sink_fraction:.3f}") for _, r in cls.iterrows()]),
              "", f"Heads that switch between dormant and active across domains: {len(res.switching_heads())}.", ""]
    return parts


def act_section(res) -> list[str]:
    parts: list[str] = []
    s = res.summary
    parts += ["### ACT calibration (Yu et al.)", "",
              (f"Reference head search (each head of layers 2…L−2 with hidden sinks calibrated alone, kept when "
               f"calibration accuracy rises; β = {res.params.beta})" if res.params.search == "reference" else
               f"Greedy head search on the calib split (candidates: heads with hidden sinks on the prompts, "
               f"up to {res.params.max_candidates}; β = {res.params.beta})")
              + f", evaluated on {s['n_items']} held-out items. "
              f"Heads kept: {', '.join(f'L{l}H{h}' for l, h in res.heads) or 'none'}.", "",
              markdown_table(("metric", "base", "ACT", "Δ (95% bootstrap CI)"),
                             [("mean log p(answer)", f"{res.heldout.base_logprob.mean():.3f}",
                               f"{res.heldout.act_logprob.mean():.3f}",
                               f"{s['delta_logprob']:+.4f} [{s['delta_logprob_ci'][0]:+.4f}, {s['delta_logprob_ci'][1]:+.4f}]"),
                              ("accuracy (3 choices)", f"{s['accuracy_base']:.3f}", f"{s['accuracy_act']:.3f}",
                               f"{s['delta_accuracy']:+.3f} [{s['delta_accuracy_ci'][0]:+.3f}, {s['delta_accuracy_ci'][1]:+.3f}]")]),
              "", f"Verdict on this model: **{s['verdict']}**.", ""]
    return parts


def _load_waiting(path: str, minutes: float):
    from pathlib import Path

    from mechscope.probes.results import Result

    deadline = time.time() + 60 * minutes
    while not (Path(path) / "result.json").is_file() and time.time() < deadline:
        time.sleep(30)
    return Result.load(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes; print only")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-streaming", action="store_true")
    ap.add_argument("--streaming-from", default=None, help="a saved StreamingResult directory")
    ap.add_argument("--sinks-from", default=None, help="a saved SinkResult (mechscope sinks) to report Sink_k^ε from")
    ap.add_argument("--act-from", default=None, help="a saved ACTResult (mechscope act) to report")
    ap.add_argument("--wait", type=float, default=0,
                    help="minutes to wait for the --*-from results to appear (runs still in progress)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from mechscope.probes import datasets
    from mechscope.probes.models import load

    model = load("smollm2-135m").model
    tok = model.tokenizer
    n_texts, T_long = (32, 512) if args.quick else (256, 2048)
    texts = datasets.load_texts("mixed")[:n_texts]
    short = [tok(t, add_special_tokens=False)["input_ids"][:64] for t in texts]
    long_ids = [tok(datasets.load_long_text("paradise_lost"), add_special_tokens=False)["input_ids"][:T_long]]

    info = machine_info()
    parts = [f"Machine: {info['cpu']}, {info['cores']} cores (shared with other jobs; load {info['load average (1 min)']} "
             f"at start), {info['memory']}; torch {info['torch']}, {info['torch threads']} thread; "
             f"transformer-lens {info.get('transformer-lens', '?')}. Model smollm2-135m (float32, CPU).", ""]

    parts += ["### Sink metric vs plain forward pass", "",
              f"Medians of {args.rounds} round-robin calls. Target: time ≤ 1.2×, peak extra memory ≤ 1.3×.", ""]
    rows = []
    for label, seqs, bs in ((f"{len(short)} texts × 64 tokens (batch 16)", short, 16),
                            (f"1 text × T = {len(long_ids[0])}", long_ids, 1)):
        m = bench_metric(model, seqs, bs, args.rounds)
        p, s = m["plain"], m["sink"]
        rows.append((label, f"{p.time:.2f}", f"{s.time:.2f}", f"**{s.time / p.time:.3f}**",
                     f"{p.peak_mb:.0f}", f"{s.peak_mb:.0f}", f"**{s.peak_mb / max(p.peak_mb, 1e-9):.3f}**"))
        print(label, "plain", p.times.samples, p.peaks_mb, "sink", s.times.samples, s.peaks_mb, flush=True)
    parts.append(markdown_table(("workload", "plain s", "sink s", "time ratio", "plain peak MB", "sink peak MB",
                                 "memory ratio"), rows))
    parts.append("")

    S, W = 4, 60
    lens = (16, 64) if args.quick else (64, 256)
    parts += [f"### Generation memory: sinks + window (S = {S}, W = {W}, cache {S + W})", "",
              "Longest cache = entries before trimming (cache + the token being fed). "
              "Peak extra RSS of the whole `generate` call.", ""]
    parts.append(markdown_table(("policy", "new tokens", "longest cache", "peak extra MB", "seconds"),
                                bench_generation(model, S, W, lens)))
    parts += ["", f"Greedy continuations at {lens[-1]} new tokens ({lens[-1] / (S + W):.0f}× the cache), last characters:", ""]
    parts += samples(model, S, W, lens[-1])
    parts += ["", "Greedy decoding of this 135M model falls into repetition loops under every cache policy, so the "
              "samples do not separate the policies; the degradation of window-only shows in the streaming "
              "perplexity below (teacher-forced), not in these greedy loops.", ""]

    if not args.no_streaming:
        from mechscope.analyses.streaming import streaming_perplexity
        from mechscope.probes.results import Result

        if args.streaming_from:
            res = _load_waiting(args.streaming_from, args.wait)
            how = f"loaded from a saved run ({args.streaming_from})"
        else:
            t = time.perf_counter()
            res = streaming_perplexity(model, n_tokens=256 if args.quick else 2048, n_sink=4,
                                       window=28 if args.quick else 252, recompute_every=8)
            how = f"{time.perf_counter() - t:.0f} s"
        p = res.params
        parts += ["### Streaming perplexity (StreamingLLM reproduction)", "",
                  f"Text: {res.source}, first {res.n_scored} tokens; cache C = S + W = {p.n_sink} + {p.window} = "
                  f"{res.cache_size} (window-only keeps the last {res.window_only_cache}); recomputation scores every "
                  f"{p.recompute_every}th position past the cache, over the previous C + 1 tokens ({how}).", ""]
        sm = res.summary()
        parts.append(markdown_table(("policy", "ppl, all positions", "ppl, past the cache", "ppl, common subsample"),
                                    [(r.policy, f"{r.ppl_all:.2f} (n={r.n_all})", f"{r.ppl_past_cache:.2f} (n={r.n_past_cache})",
                                      f"{r.ppl_common_past_cache:.2f} (n={r.n_common_past_cache})") for r in sm.itertuples()]))
        parts.append("")
    if args.sinks_from:
        parts += sinks_section(_load_waiting(args.sinks_from, args.wait))
    if args.act_from:
        parts += act_section(_load_waiting(args.act_from, args.wait))
    body = "\n".join(parts)
    print(body)
    if not args.quick:
        write_section(HEADING, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
