"""Peak extra memory of the Next-token analysis for a short and a long prompt.

``python -m benchmarks.bench_next_token_memory [--words 50 5000] [--device cpu]`` loads the
embedded model, runs :func:`analyses.next_token.next_token` once per prompt as a warm-up,
then measures each prompt's peak extra memory (:class:`benchmarks.common.PeakMemory`) and
time, and prints the ratios long / short of the extra memory and of the process' peak (the
server's memory: the Next-token page should stay within 1.5×).
"""

from __future__ import annotations

import argparse
import json

from benchmarks.common import PeakMemory, time_call


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--words", type=int, nargs="+", default=[50, 5000])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    from mechscope.analyses.next_token import next_token
    from mechscope.probes.models import DEFAULT_MODEL, load
    from mechscope.probes.prompts import prompt_ids

    model = load(DEFAULT_MODEL, device=args.device).model
    base = "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun . "
    words = base.split()
    rows = {}
    for n in args.words:
        prompt = " ".join(words[i % len(words)] for i in range(n))
        next_token(model, prompt, k=10)  # warm-up
        with PeakMemory(device="cuda" if args.device.startswith("cuda") else "cpu") as mem:
            next_token(model, prompt, k=10)
        t = time_call(lambda: next_token(model, prompt, k=10), repeat=1, warmup=0)
        rows[n] = {"tokens": int(len(prompt_ids(model, prompt, None))), "peak_extra_mb": round(mem.peak_extra_mb, 1),
                   "process_peak_mb": round(mem.peak / 2**20, 1),
                   "seconds": round(t.median, 3), "method": mem.method}
    short, long_ = rows[min(rows)], rows[max(rows)]
    out = {"rows": rows, "extra_ratio_long_short": round(long_["peak_extra_mb"] / max(short["peak_extra_mb"], 1e-9), 2),
           "process_ratio_long_short": round(long_["process_peak_mb"] / short["process_peak_mb"], 3)}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
