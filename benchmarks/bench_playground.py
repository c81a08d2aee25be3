"""Playground comparison cost: baseline + intervened continuations of one prompt.

Variants, measured round-robin in one process on smollm2-135m (greedy, full KV cache, a
uniform head mask and a neuron clamp, ``--new-tokens`` tokens after a 32-token prompt):

(a)  one plain ``generate`` — the unit of cost;
(b)  the old route: ``generate`` baseline, ``generate`` intervened, then two teacher-forced
     scoring passes (baseline tokens without and with the interventions);
(c)  ``compare_generations``: both continuations as two rows of one batched forward per step
     (``generate_rows``) and one batched scoring pass.

Target: (c) ≤ 1.25 × (a).

Run: ``python -m benchmarks.bench_playground [--rounds N] [--threads N] [--no-write]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import machine_info, markdown_table, measure, ratio, write_section

SECTION = "Playground comparison"


def bench(model, rounds: int, new_tokens: int, device: str | None = None) -> list[list[str]]:
    from mechscope.analyses.playground import compare_generations
    from mechscope.probes.decoding import generate, score_continuation
    from mechscope.probes.interventions import HeadMask, NeuronClamp

    g = torch.Generator().manual_seed(32)
    prompt = torch.randint(100, model.cfg.d_vocab, (32,), generator=g).tolist()
    ivs = (HeadMask(5, 2, "uniform"), NeuronClamp(10, 100, value=3.0))

    def old_route():
        base = generate(model, prompt, new_tokens, stop_at_eos=False)
        generate(model, prompt, new_tokens, interventions=ivs, stop_at_eos=False)
        score_continuation(model, prompt, base.new_tokens)
        score_continuation(model, prompt, base.new_tokens, ivs)

    variants = {
        "(a) one plain generate": lambda: generate(model, prompt, new_tokens, stop_at_eos=False),
        "(b) two generates + two scoring passes": old_route,
        "(c) compare_generations (batched rows)": lambda: compare_generations(
            model, prompt, ivs, max_new_tokens=new_tokens),
    }
    res = measure(variants, rounds=rounds, warmup=1, device=device)
    unit = res["(a) one plain generate"]
    rows = [[name, f"{m.time * 1e3:.0f}", f"{ratio(m.time, unit.time):.2f}", f"{m.peak_mb:.0f}"]
            for name, m in res.items()]
    print(markdown_table(["variant", "ms", "× (a)", "peak extra MB"], rows), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--out", default=None, help="write the section to this markdown file instead of RESULTS.md")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from mechscope.probes.models import load

    model = load("smollm2-135m", device=args.device).model
    started = time.strftime("%Y-%m-%d %H:%M")
    rows = bench(model, args.rounds, args.new_tokens, None if args.device == "cpu" else args.device)
    body = "\n".join([
        f"Run {started}: `python -m benchmarks.bench_playground --rounds {args.rounds}"
        + (f" --threads {args.threads}" if args.threads else "") + f" --new-tokens {args.new_tokens}"
        + (f" --device {args.device}" if args.device != "cpu" else "") + "`.",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine_info().items()) + ".",
        "",
        f"Baseline + intervened continuations ({args.new_tokens} greedy tokens after 32, full KV cache, "
        "uniform head mask L5H2 + neuron clamp L10N100 = 3), medians of interleaved rounds. Target: (c) ≤ 1.25 × (a).",
        "",
        markdown_table(["variant", "ms", "× (a)", "peak extra MB"], rows),
    ])
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(f"### {SECTION}: {args.device}\n\n{body}\n")
    elif args.no_write:
        print(body)
    else:
        write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
