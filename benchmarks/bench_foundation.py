"""Foundation benchmark: the cost of the probe layer on smollm2-135m.

At 512 and 2048 tokens (one sequence of seeded random token ids — cost does not depend on
content), measured round-robin in one process with :func:`benchmarks.common.measure`:

(a)   plain forward under ``no_grad`` returning logits;  (a0) the same without logits
      (``return_type=None``: no unembedding — what a capture-only run does);
(b)   ``probes.capture.run`` with one per-layer reducer of ``hook_pattern`` on all 30
      layers (mean attention to the first token per head, the α₁ column mean of the sink
      papers), no logits;  (b+) the same with ``return_logits=True``;
(c)   TransformerLens ``run_with_cache`` of every hook (under ``no_grad``).

Targets: time (b)/(a0) and (b+)/(a) ≤ 1.15, peak extra memory ≤ 1.3 (like for like: with
and without the unembedding). (c) is reported beside them. Then ``generate`` tokens/s,
64 new greedy tokens with the full KV cache, with and without interventions (a uniform
head mask and a neuron clamp); target ≥ 0.8 × plain.

Run: ``python -m benchmarks.bench_foundation [--rounds N] [--threads N] [--no-write]``.
Also measures cold vs warm model loading in fresh subprocesses (``--load``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

from benchmarks.common import _meminfo_kb, machine_info, markdown_table, measure, ratio, write_section

SECTION = "Foundation"
LENGTHS = (512, 2048)


def _tokens(model, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    return torch.randint(100, model.cfg.d_vocab, (1, n), generator=g)


def forward_variants(model, tokens: torch.Tensor, with_full_cache: bool = True) -> dict:
    from mechscope.probes import capture

    n_layers = model.cfg.n_layers
    sink = torch.zeros(n_layers, model.cfg.n_heads)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]

    def alpha1(pattern: torch.Tensor, name: str, batch) -> None:
        # pattern [B, H, Tq, Tk]; mean over real queries of the weight on key 0
        layer = int(name.split(".")[1])
        mask = batch.mask.to(pattern.dtype)  # [B, T]
        col = (pattern[..., 0] * mask[:, None, :]).sum(-1) / mask.sum(-1)[:, None]
        sink[layer] += col.sum(0).float()

    reducers = {n: alpha1 for n in names}

    def plain():
        with torch.no_grad():
            return model(tokens)

    def plain_nologits():
        with torch.no_grad():
            return model(tokens, return_type=None)

    def reduce():
        return capture.run(model, tokens, reducers=reducers)

    def reduce_logits():
        return capture.run(model, tokens, reducers=reducers, return_logits=True)

    def full_cache():
        with torch.no_grad():
            return model.run_with_cache(tokens)

    variants = {
        "(a) forward": plain,
        "(a0) forward, no logits": plain_nologits,
        "(b) capture α₁ reducer": reduce,
        "(b+) capture α₁ reducer + logits": reduce_logits,
    }
    if with_full_cache:
        variants["(c) run_with_cache (all)"] = full_cache
    return variants


def bench_forward(model, rounds: int, lengths=LENGTHS) -> list[list[str]]:
    rows = []
    for n in lengths:
        tokens = _tokens(model, n)
        # (c) at 2048 holds every layer's T×T patterns and scores (~10 GB): only with room
        need_gb = 0.8 * (n / 512) ** 2 + 1
        room = _meminfo_kb("MemAvailable") / 1024 / 1024 > 1.5 * need_gb
        res = measure(forward_variants(model, tokens, with_full_cache=room), rounds=rounds, warmup=1)
        first = len(rows)
        a, a0 = res["(a) forward"], res["(a0) forward, no logits"]
        for name, m in res.items():
            base = a0 if name.startswith("(b) ") else a  # like for like: both without logits
            rows.append([
                n, name, f"{m.time * 1e3:.0f}", f"{m.peak_mb:.0f}",
                f"{ratio(m.time, base.time):.2f}", f"{ratio(m.peak_mb, base.peak_mb):.2f}",
                "(a0)" if base is a0 else "(a)",
            ])
        if not room:
            rows.append([n, "(c) run_with_cache (all)", "skipped: not enough free memory", "", "", "", ""])
        print(markdown_table(["tokens", "variant", "ms", "peak extra MB", "time ×", "memory ×", "vs"], rows[first:]),
              flush=True)
    return rows


def bench_generate(model, rounds: int, new_tokens: int = 64) -> list[list[str]]:
    from mechscope.probes.decoding import generate
    from mechscope.probes.interventions import HeadMask, NeuronClamp

    prompt = _tokens(model, 32)[0].tolist()
    ivs = [HeadMask(5, 2, "uniform"), NeuronClamp(10, 100, value=3.0)]
    variants = {
        "generate, plain": lambda: generate(model, prompt, new_tokens, stop_at_eos=False),
        "generate, head mask + neuron clamp": lambda: generate(model, prompt, new_tokens, interventions=ivs,
                                                               stop_at_eos=False),
    }
    res = measure(variants, rounds=rounds, warmup=1)
    plain = res["generate, plain"]
    rows = []
    for name, m in res.items():
        tps = new_tokens / m.time
        rows.append([name, f"{tps:.1f}", f"{ratio(tps, new_tokens / plain.time):.2f}"])
    print(markdown_table(["variant", "tokens/s", "× plain"], rows), flush=True)
    return rows


_LOAD_SNIPPET = (
    "import time; t=time.perf_counter(); from mechscope.probes.models import load; load('smollm2-135m'); "
    "print(time.perf_counter()-t)"
)


def bench_load(repeat: int = 2) -> list[list[str]]:
    """Cold (empty $MECHSCOPE_CACHE: GGUF → HF → TransformerLens, then cache written) vs
    warm (cache verified by sha256 and memory-mapped) loads, each in a fresh interpreter.
    Also the bare ``import transformer_lens`` time, which every load pays."""
    def run(code: str, env: dict) -> float:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MECHSCOPE_CACHE": tmp, "HF_HUB_OFFLINE": "1"}
        imp = [run("import time; t=time.perf_counter(); import transformer_lens; print(time.perf_counter()-t)", env)
               for _ in range(repeat)]
        cold = run(_LOAD_SNIPPET, env)
        warm = [run(_LOAD_SNIPPET, env) for _ in range(repeat)]
    rows.append(["import transformer_lens", f"{min(imp):.1f}"])
    rows.append(["cold load (GGUF, writes cache)", f"{cold:.1f}"])
    rows.append(["warm load (cache)", f"{min(warm):.1f}"])
    print(markdown_table(["load", "seconds"], rows), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--load", action="store_true", help="also time cold vs warm model loading")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from mechscope.probes.models import load

    model = load("smollm2-135m").model
    started = time.strftime("%Y-%m-%d %H:%M")
    info = machine_info()
    fwd = bench_forward(model, args.rounds, args.lengths)
    gen = bench_generate(model, args.rounds, args.new_tokens)
    load_rows = bench_load() if args.load else []
    body = [
        f"Run {started}: `python -m benchmarks.bench_foundation --rounds {args.rounds}"
        + (f" --threads {args.threads}" if args.threads else "") + ("  --load" if args.load else "") + "`.",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + ".",
        "",
        "Forward pass, one sequence (medians of interleaved rounds; *peak extra* = peak RSS "
        "during the call minus RSS before it; ratios against the like-for-like baseline in column *vs*):",
        "",
        markdown_table(["tokens", "variant", "ms", "peak extra MB", "time ×", "memory ×", "vs"], fwd),
        "",
        f"Generation, {args.new_tokens} new tokens after a 32-token prompt, greedy, full KV cache:",
        "",
        markdown_table(["variant", "tokens/s", "× plain"], gen),
    ]
    if load_rows:
        body += ["", "Model loading, fresh interpreter each (seconds):", "",
                 markdown_table(["load", "seconds"], load_rows)]
    if not args.no_write:
        write_section(SECTION, "\n".join(body))
    else:
        print("\n".join(body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
