"""Decode every MLP neuron of a Llama-3.1-8B-shaped model through the unembedding, on a GPU.

Standalone (torch only) so it runs on a bare GPU machine as it is:

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_neuron_decode.py

Shapes of Llama-3.1-8B: 32 layers × 14,336 neurons (458,752 directions), d_model 4096, vocab
128,256. Random bf16 weights of those shapes cost the same as the real ones (the work does
not depend on the values). What it does, in order:

1. measures the device's bf16 matmul rate (8192³ product, CUDA events, median) — the ceiling;
2. times the bare chunked product W_out·(γ⊙W_U) with no top-k (the baseline);
3. times the full decode: per chunk, the product, then top-k and bottom-k (k=10) per row,
   both with ``torch.topk`` and with the block-max pre-selection used on CPU in
   ``probes.readout.topk_both``;
4. checks a few neurons against a float32 reference (same bf16 inputs, fp32 product).

FLOPs counted: 2·n_neurons·d_model·vocab = 4.82e14. The paper (arXiv 2501.02688) reports
under 15 minutes for all up-projection neurons of Llama-3.1-8B.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch

L, N, D, V = 32, 14336, 4096, 128256
K = 10


def cuda_time(fn, repeat: int = 5, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b) / 1e3)
    return out


def matmul_peak() -> float:
    n = 8192
    gens = [torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
    c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    i = [0]

    def mm():
        torch.matmul(gens[i[0] % 2], gens[2 + i[0] % 2], out=c)
        i[0] += 1

    ts = cuda_time(lambda: [mm() for _ in range(10)], repeat=5, warmup=2)
    del gens, c
    return 2 * n**3 * 10 / statistics.median(ts) / 1e12


def topk_block(logits: torch.Tensor, k: int, block: int = 64):
    n, v = logits.shape
    nb = v // block
    body = logits[:, : nb * block].view(n, nb, block)
    offs = torch.arange(block, device=logits.device)
    res = []
    for largest in (True, False):
        red = body.amax(2) if largest else body.amin(2)
        blocks = torch.topk(red, k, dim=1, largest=largest).indices
        ids = (blocks[:, :, None] * block + offs).reshape(n, -1)
        if v > nb * block:
            ids = torch.cat([ids, torch.arange(nb * block, v, device=logits.device).expand(n, -1)], dim=1)
        cand = torch.gather(logits, 1, ids)
        val, j = torch.topk(cand, k, dim=1, largest=largest)
        res += [val, torch.gather(ids, 1, j)]
    return res


def topk_plain(logits: torch.Tensor, k: int):
    tv, ti = torch.topk(logits, k, dim=1)
    bv, bi = torch.topk(logits, k, dim=1, largest=False)
    return [tv, ti, bv, bi]


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(0)
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    peak = matmul_peak()
    print(f"measured bf16 matmul rate (8192^3): {peak:.0f} TFLOP/s", flush=True)

    W_out = (torch.randn(L * N, D, device="cuda", dtype=torch.bfloat16) * 0.02)
    W_U = torch.randn(D, V, device="cuda", dtype=torch.bfloat16) * 0.02
    gamma = torch.rand(D, device="cuda") + 0.5
    Ws = (W_U.float() * gamma[:, None]).to(torch.bfloat16).contiguous()
    del W_U
    n = W_out.shape[0]
    flops = 2.0 * n * D * V
    results = {"device": name, "peak_tflops": peak, "flops": flops}
    rows = []

    for chunk in (8192, 16384):
        buf = torch.empty(chunk, V, device="cuda", dtype=torch.bfloat16)
        out_ids = torch.empty(n, 2 * K, device="cuda", dtype=torch.int64)
        out_val = torch.empty(n, 2 * K, device="cuda", dtype=torch.bfloat16)

        def bare():
            for s in range(0, n, chunk):
                e = min(s + chunk, n)
                torch.matmul(W_out[s:e], Ws, out=buf[: e - s])

        def decode(select):
            def run():
                for s in range(0, n, chunk):
                    e = min(s + chunk, n)
                    lg = buf[: e - s]
                    torch.matmul(W_out[s:e], Ws, out=lg)
                    tv, ti, bv, bi = select(lg, K)
                    out_val[s:e, :K] = tv
                    out_val[s:e, K:] = bv
                    out_ids[s:e, :K] = ti
                    out_ids[s:e, K:] = bi
            return run

        torch.cuda.reset_peak_memory_stats()
        for label, fn in (("bare product", bare), ("decode, torch.topk", decode(topk_plain)),
                          ("decode, block top-k", decode(topk_block))):
            ts = cuda_time(fn, repeat=3, warmup=1)
            t = statistics.median(ts)
            rows.append((chunk, label, t, flops / t / 1e12))
            print(f"chunk {chunk:6d}  {label:22s} {t:7.3f} s  {flops / t / 1e12:6.0f} TFLOP/s", flush=True)
        rows.append((chunk, "peak GPU memory (GB)", torch.cuda.max_memory_allocated() / 1e9, float("nan")))

        # correctness on a few random neurons vs an fp32 product of the same bf16 inputs
        decode(topk_block)()
        torch.cuda.synchronize()
        idx = torch.randint(0, n, (64,), device="cuda")
        ref = W_out[idx].float() @ Ws.float()
        rv, ri = torch.topk(ref, K, dim=1)
        got_ids = out_ids[idx, :K]
        got_val = out_val[idx, :K].float()
        top1 = (got_ids[:, 0] == ri[:, 0]).float().mean().item()
        # every returned id's true logit must reach the true k-th value up to bf16 rounding
        true_of_got = torch.gather(ref, 1, got_ids)
        tol = 2 ** -7 * rv.abs().max(dim=1, keepdim=True).values
        in_topk = (true_of_got >= rv[:, -1:] - tol).float().mean().item()
        rel = ((got_val - rv).norm() / rv.norm()).item()
        bref = torch.topk(ref, K, dim=1, largest=False)
        brel = ((out_val[idx, K:].float() - bref.values).norm() / bref.values.norm()).item()
        results[f"check_chunk{chunk}"] = {"top1_agree": top1, "topk_within_tol": in_topk,
                                          "top_rel_err": rel, "bottom_rel_err": brel}
        print(f"check (64 neurons): top-1 id agrees {top1:.3f}; returned ids in fp32 top-k (± bf16 ulp) {in_topk:.3f}; "
              f"rel. err top values {rel:.2e}, bottom {brel:.2e}", flush=True)
        del buf, out_ids, out_val

    results["rows"] = rows
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_neuron_decode.json"), "w") as f:
            json.dump(results, f, indent=1)
    print("\n| chunk | variant | time (s) | TFLOP/s | % of measured peak |")
    print("|---|---|---|---|---|")
    for chunk, label, t, tf in rows:
        if label.startswith("peak GPU"):
            print(f"| {chunk} | {label} | {t:.1f} | | |")
        else:
            print(f"| {chunk} | {label} | {t:.3f} | {tf:.0f} | {100 * tf / peak:.0f}% |")
    print(f"\ndevice {name}; measured bf16 peak {peak:.0f} TFLOP/s; decode FLOPs {flops:.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
