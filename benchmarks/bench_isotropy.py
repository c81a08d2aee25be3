"""Benchmarks for isotropy: ``python -m benchmarks.bench_isotropy``.

1. **IsoScore on 100,000 × d points** vs the baseline "one covariance + eigendecomposition
   of the same points" (``torch.cov`` + ``torch.linalg.eigvalsh``, same dtype, same device);
   the ``isoscore`` package (the oracle: covariance + ``svdvals``) beside it. Target ≤ 1.2×.
2. **All-layer scores over a text set** (``analyses.isotropy.isotropy``: the residual stream
   at every depth and every head's output, W_E/W_U left out) vs a plain forward pass of the
   same texts through ``probes.capture.run`` with the same batches and no hook. Time and peak
   memory from ``benchmarks.common.measure``, the same way for both (round-robin, medians):
   on the CPU the peak RSS above the RSS at entry (kernel VmHWM after ``clear_refs``), on
   CUDA ``max_memory_allocated`` above the allocation at entry. The scores' cost is a
   per-token part (the reducers in the hooks) plus a fixed part (one eigvalsh and one eigh
   of d × d per depth, O(L·d³), whatever the number of tokens); their memory is a fixed
   state (L·d² float64 sums + the token samples) beside the forward's own activations, which
   grow with the batch. So the ratios are reported at several sizes ``NxT`` (N texts of ≤ T
   tokens, batch 8) or ``NxTbB`` (batch B). Target ≤ 1.2× time, ≤ 1.3× memory.
3. **Contrastive search vs greedy**, time per generated token with the KV cache (k = 4 and
   k = 8; nucleus sampling beside them; ``--decode-tokens`` new tokens after a short prompt),
   and after longer prompts (``--decode-contexts``), where reading the cache dominates: k = 4
   by the shared-row pass (the default) and by k rows (its fallback), with a check that both
   chose the same tokens. Target ≤ 1.5× greedy at k = 4.

On the CPU, times and ratios are this process's CPU time (``time.process_time``, 1 thread):
on a shared, loaded machine wall time also counts the waits for a core and swings within a
run; wall-time ratios are printed beside them. On CUDA: wall time, synchronised.

``--device cuda`` runs everything on the GPU (model loaded there; CUDA events via
``benchmarks.common``); ``--out FILE`` writes the markdown section there instead of
RESULTS.md; ``--quick`` runs tiny sizes and prints only. Threads: 1 on the CPU.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import machine_info, markdown_table, measure, write_section

HEADING = "Isotropy"


def with_cpu_time(variants: dict, warmup: int = 1) -> tuple[dict, dict]:
    """The variants wrapped to record this process's CPU time per call (``time.process_time``:
    on a shared, loaded machine it counts only this process's work, 1 thread, where wall time
    also counts the waits for a core). Returns (wrapped variants, {name: samples after the
    warm-up}); medians via :func:`cpu_median`."""
    cpu: dict = {k: [] for k in variants}

    def wrap(k, f):
        def g():
            t = time.process_time()
            out = f()
            cpu[k].append(time.process_time() - t)
            return out
        return g

    return {k: wrap(k, f) for k, f in variants.items()}, cpu


def cpu_median(samples: list, warmup: int = 1) -> float:
    import statistics

    return statistics.median(samples[warmup:])


def bench_isoscore(n: int, d: int, device: str, rounds: int) -> list:
    from mechscope.analyses.isotropy import isoscore

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, d, dtype=torch.float64)).to(device)
    variants = {
        "baseline: torch.cov + eigvalsh": lambda: torch.linalg.eigvalsh(torch.cov(x.T)),
        "isoscore (ours)": lambda: isoscore(x),
    }
    if device == "cpu":
        from IsoScore.IsoScore import IsoScore as oracle  # the dev-only oracle, CPU only

        xn = x.numpy()
        variants["isoscore package (cov + svdvals)"] = lambda: oracle(xn)
    m = measure(variants, rounds=rounds, warmup=1, device=device if device != "cpu" else None)
    base = m["baseline: torch.cov + eigvalsh"].time
    return [(k, f"{v.time * 1e3:.1f}", f"{v.time / base:.2f}×") for k, v in m.items()]


def bench_all_layers(model, seqs, batch_size: int, rounds: int, device: str) -> tuple[list, dict]:
    from mechscope.analyses.isotropy import isotropy
    from mechscope.probes import capture

    texts = tuple(tuple(s) for s in seqs)
    variants = {
        "plain forward": lambda: capture.run(model, seqs, batch_size=batch_size),
        "all-layer scores": lambda: isotropy(model, texts=texts, weights=False, batch_size=batch_size,
                                             max_tokens=max(map(len, texts))),  # else cut at 128
    }
    variants, cpu = with_cpu_time(variants)
    m = measure(variants, rounds=rounds, warmup=1, device=device if device != "cpu" else None)
    for k in m:  # on the CPU the times compared are CPU times (see with_cpu_time)
        m[k].cpu_time = cpu_median(cpu[k]) if device == "cpu" else m[k].time
    return m, {"tokens": sum(len(s) for s in seqs), "texts": len(seqs)}


def finalize_time(model, seqs, batch_size: int, device: str) -> tuple[float, float]:
    """(fixed part, streaming pass) of one scoring run: the streaming pass timed inside it
    (``capture.run`` with the reducers), the fixed part = the rest."""
    import mechscope.analyses.isotropy as iso

    texts = tuple(tuple(s) for s in seqs)
    real_run = iso.capture.run
    box = {}

    def timed_run(*a, **k):
        s = time.perf_counter()
        out = real_run(*a, **k)
        if device != "cpu":
            torch.cuda.synchronize()
        box["stream"] = time.perf_counter() - s
        return out

    iso.capture.run = timed_run
    try:
        t0 = time.perf_counter()
        iso.isotropy(model, texts=texts, weights=False, batch_size=batch_size, max_tokens=max(map(len, texts)))
        if device != "cpu":
            torch.cuda.synchronize()
        total = time.perf_counter() - t0
    finally:
        iso.capture.run = real_run
    return total - box["stream"], box["stream"]


def _path(name: str, device: str):
    """A context forcing contrastive search's candidate pass: "shared row" (one row over the
    shared cache, where exact) or "k rows" (its fallback), whatever the device's default."""
    from unittest import mock

    import mechscope.probes.contrastive as pc

    if name == "k rows":
        return mock.patch.object(pc, "shares_one_row", lambda *a, **kw: False)
    return mock.patch.object(pc, "SHARED_ROW_DEVICES", (torch.device(device).type,))


def bench_decoding(model, prompt, n_new: int, rounds: int, device: str, short: bool = True) -> list:
    """Time per new token of each strategy after ``prompt`` (text or ids). Contrastive k = 4
    by both candidate passes (the device's default is marked); ``short=False`` (long
    contexts): greedy and those two only. The last column says whether the two k = 4 paths
    chose the same tokens."""
    from mechscope.probes.contrastive import SHARED_ROW_DEVICES, Contrastive
    from mechscope.probes.decoding import Sample, generate

    out = {}
    default = "shared row" if torch.device(device).type in SHARED_ROW_DEVICES else "k rows"

    def run(key, strategy):
        out[key] = generate(model, prompt, n_new, strategy, stop_at_eos=False).new_tokens

    def by(path):
        def f():
            with _path(path, device):
                run(path, Contrastive(0.6, 4))
        return f

    variants = {"greedy": lambda: run("greedy", "greedy")}
    for path in ("shared row", "k rows"):
        variants[f"contrastive k=4 (α 0.6), {path}{' (the default here)' if path == default else ''}"] = by(path)
    if short:
        variants["contrastive k=8 (α 0.6)"] = lambda: run("k8", Contrastive(0.6, 8))
        variants["nucleus sampling (top-p 0.95)"] = lambda: run("p", Sample(top_p=0.95))
    variants, cpu = with_cpu_time(variants)
    m = measure(variants, rounds=rounds, warmup=1, device=device if device != "cpu" else None)
    t = {k: cpu_median(cpu[k]) if device == "cpu" else v.time for k, v in m.items()}
    same = "yes" if out["shared row"] == out["k rows"] else "NO"
    return [(k, f"{t[k] / n_new * 1e3:.2f}", f"{t[k] / t['greedy']:.2f}×", f"{v.time / m['greedy'].time:.2f}×",
             same if "k=4" in k else "") for k, v in m.items()]


def long_prompt(model, n_tokens: int) -> list[int]:
    """A prompt of exactly ``n_tokens`` ids: the isotropy text set's texts, concatenated."""
    from mechscope.analyses.isotropy import IsotropyParams

    ids: list[int] = []
    for item in IsotropyParams(n_texts=64).selected(grouped=True):
        ids += model.to_tokens(item.text, prepend_bos=False)[0].tolist()
        if len(ids) >= n_tokens:
            break
    if len(ids) < n_tokens:
        raise ValueError(f"The text set holds only {len(ids)} tokens, not {n_tokens}.")
    return ids[:n_tokens]


def parse_size(size: str) -> tuple[int, int, int]:
    """"NxT" (batch 8) or "NxTbB" → (texts, tokens per text, batch size)."""
    n, rest = size.split("x")
    t, _, b = rest.partition("b")
    return int(n), int(t), int(b) if b else 8


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes; print only")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the markdown section to this file (default: RESULTS.md)")
    ap.add_argument("--sizes", default="24x128,96x256,96x256b32",
                    help="text-set sizes NxT or NxTbB (batch B, default 8) for the all-layer benchmark")
    ap.add_argument("--parts", default="isoscore,layers,decoding", help="which benchmarks to run")
    ap.add_argument("--decode-tokens", type=int, default=128, help="new tokens per generation (decoding benchmark)")
    ap.add_argument("--decode-contexts", default="340:24,1000:16",
                    help="longer prompts for the decoding benchmark, PROMPT_TOKENS:NEW_TOKENS, comma-separated")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(1)
    from mechscope.analyses.isotropy import IsotropyParams, token_ids
    from mechscope.probes.models import load

    model = load("smollm2-135m", device=args.device).model
    d = model.cfg.d_model
    n_points = 2000 if args.quick else 100_000
    parts = []
    info = machine_info()
    clock = "CPU time of this process (time.process_time, 1 thread)" if args.device == "cpu" else "wall time (CUDA synchronised)"
    parts += [f"Machine: {info}. Device: {args.device}. Medians of {args.rounds} round-robin rounds after a warm-up; "
              f"times and ratios in {clock}; wall-time ratios beside them.", ""]

    todo = set(args.parts.split(","))
    rows = bench_isoscore(n_points, d, args.device, args.rounds) if "isoscore" in todo else []
    parts += [] if not rows else [f"### IsoScore on {n_points:,} × {d} points (float64)", "",
              markdown_table(("variant", "ms", "vs baseline"), rows), ""]
    print("\n".join(parts[-4:]), flush=True)

    sizes = [] if "layers" not in todo else ["3x16"] if args.quick else args.sizes.split(",")
    rows = []
    for size in sizes:
        n, t, bs = parse_size(size)
        seqs = token_ids(model, IsotropyParams(n_texts=n).selected(grouped=True), t)
        print(f"all-layer scores: {size} ({sum(map(len, seqs)):,} tokens), {args.rounds} rounds …", flush=True)
        m, meta = bench_all_layers(model, seqs, bs, args.rounds, args.device)
        fixed, stream = finalize_time(model, seqs, bs, args.device)
        p, s = m["plain forward"], m["all-layer scores"]
        rows.append((f"{meta['texts']} × ≤{t}, batch {bs} ({meta['tokens']:,} tokens)", f"{p.cpu_time:.2f}",
                     f"{s.cpu_time:.2f}", f"{s.cpu_time / p.cpu_time:.2f}×", f"{s.time / p.time:.2f}×",
                     f"{stream / p.time:.2f}×", f"{fixed:.2f}",
                     f"{p.peak_mb:.0f}", f"{s.peak_mb:.0f}", f"{s.peak_mb / max(p.peak_mb, 1e-9):.2f}×"))
        print(rows[-1], flush=True)
    parts += [] if not rows else ["### All-layer scores (31 residual depths + 270 head outputs) vs a plain forward pass", "",
              markdown_table(("text set", "forward s", "scores s", "time ratio", "wall-time ratio", "streaming pass ratio",
                              "fixed part s (eigendecompositions, samples)", "forward peak MB", "scores peak MB",
                              "memory ratio"), rows), ""]

    n_new = 8 if args.quick else args.decode_tokens
    prompt = "The history of the old city begins with a small village by the river, where"
    contexts = [] if args.quick or not args.decode_contexts else [
        tuple(map(int, c.split(":"))) for c in args.decode_contexts.split(",")]
    header = ("strategy", "ms / token", "vs greedy", "wall-time ratio", "k = 4 paths chose the same tokens")
    if "decoding" in todo:
        rows = bench_decoding(model, prompt, n_new, args.rounds, args.device)
        n_prompt = model.to_tokens(prompt).shape[1]
        parts += [f"### Contrastive search vs greedy ({n_new} new tokens after a {n_prompt}-token prompt, KV cache)", "",
                  markdown_table(header, rows), ""]
        print("\n".join(parts[-4:]), flush=True)
        for n_prompt, n_new in contexts:
            rows = bench_decoding(model, long_prompt(model, n_prompt), n_new, args.rounds, args.device, short=False)
            parts += [f"### Contrastive search vs greedy ({n_new} new tokens after a {n_prompt}-token prompt, KV cache)",
                      "", markdown_table(header, rows), ""]
            print("\n".join(parts[-4:]), flush=True)

    body = "\n".join(parts)
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(f"## {HEADING} — {args.device}\n\n{body}\n", encoding="utf-8")
    elif not args.quick:
        write_section(HEADING, body)
    else:
        print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
