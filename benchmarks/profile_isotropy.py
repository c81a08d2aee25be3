"""Where the all-layer isotropy scorer spends its time: ``python -m benchmarks.profile_isotropy``.

On the given device (``--device cpu`` or ``cuda``), for one text-set size ``NxT[bB]``:

1. **Streaming pass vs fixed part** of ``analyses.isotropy.isotropy`` (W_E/W_U left out):
   the pass (``capture.run`` with the reducers) timed inside one scoring run, the fixed part
   (per-cloud linear algebra, sampled scores) = the rest; a plain forward of the same batches
   beside them.
2. **Host syncs during the pass** (CUDA only): ``torch.cuda.set_sync_debug_mode("warn")``
   while the pass runs, counting the warnings, for the scoring pass and for a plain forward
   (whatever the forward itself syncs).
3. **eigh timings**: ``--n-eigh`` (64) symmetric d × d float64 matrices, eigvalsh and eigh,
   one by one and batched, on the host CPU and on the device.
4. **Where the fixed part goes**: cProfile of one scoring run, the top functions.
5. **Correctness**: the scores with ``linalg_device="cpu"`` against the default (the model's
   device; CUDA only): max relative difference per score, and the fixed part's time both ways.

``--out FILE`` writes the markdown there (else printed). Threads: 1 on the CPU device unless
``--threads``; on CUDA the host CPU's linear algebra uses torch's default thread count.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from benchmarks.bench_isotropy import parse_size
from benchmarks.common import machine_info, markdown_table


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_syncs(fn, device: str, count_syncs: bool) -> tuple:
    """(fn()'s result, wall seconds, host syncs during it — None unless ``count_syncs``: the
    warnings of ``torch.cuda.set_sync_debug_mode("warn")``)."""
    _sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if count_syncs:
            torch.cuda.set_sync_debug_mode("warn")
        t = time.perf_counter()
        try:
            out = fn()
            _sync(device)
        finally:
            if count_syncs:
                torch.cuda.set_sync_debug_mode(0)
    n = sum("synchroniz" in str(w.message) for w in caught) if count_syncs else None
    return out, time.perf_counter() - t, n


def timed_pass(model, seqs, bs: int, device: str, count_syncs: bool, **kw) -> dict:
    """One scoring run with the streaming pass timed (and its host syncs counted) inside it."""
    import mechscope.analyses.isotropy as iso

    texts = tuple(tuple(s) for s in seqs)
    real_run = iso.capture.run
    box: dict = {}

    def run(*a, **k):
        out, box["stream"], box["syncs"] = timed_syncs(lambda: real_run(*a, **k), device, count_syncs)
        return out

    iso.capture.run = run
    try:
        res, total, _ = timed_syncs(lambda: iso.isotropy(model, texts=texts, weights=False, batch_size=bs,
                                                         max_tokens=max(map(len, texts)), **kw), device, False)
    finally:
        iso.capture.run = real_run
    return {"total": total, "stream": box["stream"], "fixed": total - box["stream"], "syncs": box["syncs"], "res": res}


def timed_forward(model, seqs, bs: int, device: str, count_syncs: bool) -> tuple[float, int | None]:
    from mechscope.probes import capture

    _, t, n = timed_syncs(lambda: capture.run(model, seqs, batch_size=bs), device, count_syncs)
    return t, n


def eigh_timings(n: int, d: int, device: str) -> list:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, d, d, generator=g, dtype=torch.float64)
    mats = a @ a.transpose(1, 2) / d
    rows = []
    for dev in dict.fromkeys(["cpu", device]):
        m = mats.to(dev)
        for name, fn in (("eigvalsh", torch.linalg.eigvalsh), ("eigh", torch.linalg.eigh)):
            fn(m[0])  # warm-up (library load, workspace query)
            _sync(dev)
            t = time.perf_counter()
            for k in range(n):
                fn(m[k])
            _sync(dev)
            one = time.perf_counter() - t
            t = time.perf_counter()
            fn(m)
            _sync(dev)
            batched = time.perf_counter() - t
            rows.append((dev, name, f"{n} × {d}²", f"{one * 1e3:.0f}", f"{batched * 1e3:.0f}"))
    return rows


def fixed_profile(model, seqs, bs: int, device: str, top: int = 15) -> str:
    """cProfile of one scoring run (pass and fixed part), the ``top`` functions by own time."""
    import cProfile
    import io
    import pstats

    pr = cProfile.Profile()
    pr.enable()
    timed_pass(model, seqs, bs, device, False)
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(top)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    return "\n".join(lines[start:])


def compare_linalg(model, seqs, bs: int, device: str) -> list:
    import mechscope.analyses.isotropy as iso

    texts = tuple(tuple(s) for s in seqs)
    kw = dict(texts=texts, weights=False, batch_size=bs, max_tokens=max(map(len, texts)))
    a = iso.isotropy(model, linalg_device="cpu", **kw).scores
    b = iso.isotropy(model, linalg_device=device, **kw).scores
    rows = []
    for c in ("isoscore", "isoscore_star", "avg_cosine", "partition", "self_similarity", "isoscore_z"):
        x, y = a[c].to_numpy(dtype=np.float64), b[c].to_numpy(dtype=np.float64)
        ok = ~(np.isnan(x) & np.isnan(y))
        rel = np.abs(x - y)[ok] / np.maximum(np.abs(x[ok]), 1e-300)
        rows.append((c, f"{rel.max():.2e}" if rel.size else "–", int(ok.sum())))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", default="24x128", help="NxT or NxTbB (N texts of ≤ T tokens, batch B; default 8)")
    ap.add_argument("--n-eigh", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on the CPU device)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    from mechscope.analyses.isotropy import IsotropyParams, token_ids
    from mechscope.probes.models import load

    cuda = args.device.startswith("cuda")
    model = load("smollm2-135m", device=args.device).model
    n, t, bs = parse_size(args.size)
    seqs = token_ids(model, IsotropyParams(n_texts=n).selected(grouped=True), t)
    tokens = sum(map(len, seqs))
    timed_pass(model, seqs, bs, args.device, False)  # warm-up
    timed_forward(model, seqs, bs, args.device, False)
    fwd, fwd_syncs = timed_forward(model, seqs, bs, args.device, cuda)
    p = timed_pass(model, seqs, bs, args.device, cuda)
    host = timed_pass(model, seqs, bs, args.device, False, linalg_device="cpu") if cuda else None
    out = [f"## Isotropy profile — {args.device}, {n} × ≤{t} tokens, batch {bs} ({tokens:,} tokens)", "",
           f"Machine: {machine_info()}. Torch threads: {torch.get_num_threads()}. One timed run after a warm-up, "
           "wall time (CUDA synchronised).", "",
           markdown_table(("part", "s", "× plain forward", "host syncs"), [
               ("plain forward (capture.run, no hooks)", f"{fwd:.2f}", "1.00×", "n/a (CPU)" if fwd_syncs is None else fwd_syncs),
               ("streaming pass (forward + reducers)", f"{p['stream']:.2f}", f"{p['stream'] / fwd:.2f}×",
                "n/a (CPU)" if p["syncs"] is None else p["syncs"]),
               ("fixed part (per-cloud linear algebra, sampled scores; on the model's device)", f"{p['fixed']:.2f}",
                f"{p['fixed'] / fwd:.2f}×", ""),
               *([] if host is None else [("fixed part with the linear algebra on the host CPU (linalg_device='cpu')",
                                           f"{host['fixed']:.2f}", f"{host['fixed'] / fwd:.2f}×", "")]),
               ("all-layer scores, total", f"{p['total']:.2f}", f"{p['total'] / fwd:.2f}×", ""),
           ]), ""]
    if cuda:
        out += ["Host syncs: warnings of `torch.cuda.set_sync_debug_mode(\"warn\")` while the pass runs; the "
                "plain forward's own count beside it.", ""]
    d = model.cfg.d_model
    out += [f"### eigvalsh / eigh of {args.n_eigh} symmetric {d} × {d} float64 matrices", "",
            markdown_table(("device", "op", "matrices", "one by one ms", "batched ms"),
                           eigh_timings(args.n_eigh, d, args.device)), ""]
    out += [f"### Where the fixed part goes (cProfile of one scoring run on {args.device}, top 15 by own time)", "",
            "```", fixed_profile(model, seqs, bs, args.device), "```", ""]
    if cuda:
        out += ["### Scores with the linear algebra on the host CPU vs on the GPU (the default)", "",
                markdown_table(("score", "max relative difference", "clouds"), compare_linalg(model, seqs, bs, args.device)),
                ""]
    body = "\n".join(out)
    print(body, flush=True)
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(body + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
