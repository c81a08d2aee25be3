"""Attention cost: mechscope ``generate`` with fused attention against Hugging Face SDPA.

``python -m benchmarks.bench_attention [--device cpu|cuda] [--lengths 16,1000] [--new-tokens 32]``

SmolLM2-135M, float32, greedy, ``--new-tokens`` new tokens (EOS ignored) after the first N
tokens of *Paradise Lost* (``data/long``), for each N in ``--lengths``. Variants, timed
round-robin in one process (:func:`benchmarks.common.measure`, ``--rounds`` rounds after one
warm-up each; medians):

* **fused** — :func:`probes.decoding.generate` as every caller gets it: attention through
  ``scaled_dot_product_attention`` wherever no hook reads the pattern
  (:mod:`probes.fused_attention`), the block's arithmetic without TransformerLens' module
  calls where nothing in it is hooked (:mod:`probes.fused_block`), logits of the last
  position only (:mod:`probes.forward`);
* **materialised** — the same call under ``fused_attention.materialised(model)``:
  TransformerLens' own attention ([heads × T × T] scores and pattern in every layer) and block;
* **HF SDPA** — ``transformers``' ``generate`` (greedy, its own KV cache,
  ``attn_implementation="sdpa"``) on the same GGUF weights: the baseline of the ratios.

Reported: time per generated token (whole call, prefill included, / new tokens), the ratio
to HF SDPA measured in the same rounds, peak extra memory per call (RSS on the CPU,
``max_memory_allocated`` on a GPU), and whether all three emitted the same tokens.
Targets (CPU, 1 thread): fused ≤ 1.15 × HF at 1,000 prompt tokens, ≤ 1.1 × at 16.

CPU (the targets; ~15 min on 2 shared cores)::

    python -m benchmarks.bench_attention --threads 1 --lengths 16,1000 --rounds 3

GPU (adds the 8k-context case; peak GPU memory; ~2 min on an H100)::

    python -m benchmarks.bench_attention --device cuda --lengths 16,1000,8000 --rounds 3 --out gpu_attention.md

``--memory N`` instead measures peak memory at N tokens (one row, batch 1): the sink metric
(``attention_sinks`` on the first N tokens of *Paradise Lost*, one first-token variant, residual
and value norms on) and the retrieval scan (one NIAH test of N tokens, greedy with the top-1
reducer, ``analyses.retrieval.scan``), each against a plain forward of the same N tokens —
Hugging Face's SDPA forward (last-position logits) and mechscope's own fused forward without
hooks. Target: ≤ 1.3× the plain forward::

    python -m benchmarks.bench_attention --device cuda --memory 8000 --out gpu_attention_memory.md
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import add_output_flags, machine_info, markdown_table, measure, publish, ratio

HEADING = "Fused attention vs Hugging Face SDPA (generate)"


def load_models(device: str):
    from transformers import AutoModelForCausalLM

    from mechscope.probes import models

    model = models.load("smollm2-135m", device=device).model
    models.quiet_transformers()
    path = models.smollm2_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="sdpa"
    ).eval().to(device)
    return model, hf


def prompt_ids(model, n: int) -> list[int]:
    from mechscope.probes.datasets import load_long_text
    from mechscope.probes.tokens import text_ids

    ids = text_ids(model, load_long_text("paradise_lost"))
    if len(ids) < n:
        raise SystemExit(f"the text has only {len(ids)} tokens")
    return ids[:n]


def variants(model, hf, ids: list[int], new_tokens: int, device: str, out: dict) -> dict:
    from transformers import GenerationConfig

    from mechscope.probes import fused_attention
    from mechscope.probes.decoding import generate

    def fused():
        out["fused"] = generate(model, ids, max_new_tokens=new_tokens, strategy="greedy", stop_at_eos=False).new_tokens

    def materialised():
        with fused_attention.materialised(model):
            out["materialised"] = generate(model, ids, max_new_tokens=new_tokens, strategy="greedy",
                                           stop_at_eos=False).new_tokens

    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=0, do_sample=False, use_cache=True,
                              eos_token_id=None, pad_token_id=0)
    x = torch.tensor([ids], device=device)

    def hf_sdpa():
        with torch.no_grad():
            seq = hf.generate(x, attention_mask=torch.ones_like(x), generation_config=config)
        out["hf"] = tuple(seq[0, len(ids):].tolist())

    return {"fused": fused, "materialised": materialised, "HF SDPA": hf_sdpa}


def peak_extra_mb(fn, device: str) -> float:
    """Peak memory of ``fn()`` above what was allocated before it (GPU: the allocator's peak;
    CPU: peak RSS, as :func:`benchmarks.common.measure`)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    res = measure({"x": fn}, rounds=1, warmup=0, device=device)
    return res["x"].peak_mb


def memory_rows(model, hf, n: int, device: str) -> list[list]:
    from mechscope.analyses.retrieval import scan
    from mechscope.analyses.sinks import VARIANTS, SinkParams, attention_sinks
    from mechscope.probes.forward import last_logits
    from mechscope.probes.niah import build_test, load_needles

    ids = prompt_ids(model, n)
    x = torch.tensor([ids], device=device)
    needle = load_needles()[0]
    test = build_test(model, needle, n - 64, 0.5)  # prompt = n − 64 context tokens + question ≈ n

    def hf_forward():
        with torch.no_grad():
            hf(x, logits_to_keep=1)

    def own_forward():
        with torch.no_grad():
            last_logits(model, x)

    def sinks():
        attention_sinks(model, SinkParams(texts=[ids], max_tokens=n, n_texts=None, variants=VARIANTS[:1],
                                          batch_size=1, norms=True))

    def retrieval():
        list(scan(model, [(test, needle)], max_new_tokens=20, batch_size=1))

    runs = {"plain forward (HF SDPA)": hf_forward, "plain forward (mechscope, fused)": own_forward,
            "sink metric": sinks, f"retrieval scan ({len(test.prompt_ids)} tokens)": retrieval}
    for f in runs.values():  # warm-up: caches, kernels
        f()
    peaks = {name: peak_extra_mb(f, device) for name, f in runs.items()}
    base = peaks["plain forward (HF SDPA)"]
    return [[n, name, f"{mb:.0f}", f"{ratio(mb, base):.2f}"] for name, mb in peaks.items()]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lengths", default=None, help="prompt lengths, comma-separated (default 16,1000; cuda adds 8000)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    ap.add_argument("--memory", type=int, default=None, help="measure peak memory at this many tokens instead")
    add_output_flags(ap)
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    lengths = [int(x) for x in (args.lengths or ("16,1000,8000" if cuda else "16,1000")).split(",")]
    if not cuda:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    model, hf = load_models(args.device)
    from mechscope.probes import fused_attention

    if args.memory:
        rows = memory_rows(model, hf, args.memory, args.device)
        info = machine_info()
        body = (f"Machine: {info['cpu']}, device {args.device}" + (f", GPU {info['gpu']}" if "gpu" in info else "")
                + f", torch {info['torch']}. smollm2-135m, float32, one row of {args.memory} tokens; peak memory above "
                "what was allocated before each call (after one warm-up call each); ratio to HF's SDPA forward "
                f"(last-position logits). {time.time() - t0:.0f} s.\n\n"
                + markdown_table(["tokens", "run", "peak extra MB", "× plain forward"], rows))
        publish(HEADING + ": peak memory", body, args.out, args.results)
        return

    layers_fused = model.cfg.n_layers - len(fused_attention.fallback_reasons(model))
    rows = []
    for n in lengths:
        ids = prompt_ids(model, n)
        got: dict = {}
        res = measure(variants(model, hf, ids, args.new_tokens, args.device, got), rounds=args.rounds, warmup=1,
                      device=args.device)
        same = got["fused"] == got["materialised"] == got["hf"]
        base = res["HF SDPA"].time
        for name, m in res.items():
            rows.append([n, name, f"{m.time / args.new_tokens * 1e3:.1f}", f"{ratio(m.time, base):.2f}",
                         f"{m.peak_mb:.0f}", "yes" if same else "NO"])
        if args.verbose:
            print(n, {k: str(v.times) for k, v in res.items()}, "same tokens:", same, flush=True)
    info = machine_info()
    body = (
        f"Machine: {info['cpu']}, {info['cores']} cores, device {args.device}, torch {info['torch']}, "
        f"{info['torch threads']} thread(s), transformers {info.get('transformers', '?')}, "
        f"transformer-lens {info.get('transformer-lens', '?')}; load average {info['load average (1 min)']}"
        + (f"; GPU {info['gpu']}" if "gpu" in info else "") + ".\n\n"
        f"smollm2-135m, float32, greedy, {args.new_tokens} new tokens (EOS ignored) after the first N tokens of "
        f"*Paradise Lost*; {args.rounds} round-robin rounds after one warm-up, medians; time per generated token "
        f"= whole call / new tokens (prefill included); ratio to HF SDPA in the same rounds; peak extra memory per "
        f"call ({'max_memory_allocated' if cuda else 'RSS'}). Fused on {layers_fused}/{model.cfg.n_layers} layers. "
        f"{time.time() - t0:.0f} s.\n\n"
        + markdown_table(["prompt tokens", "variant", "ms / token", "× HF SDPA", "peak extra MB", "same tokens"], rows)
    )
    publish(HEADING, body, args.out, args.results)


if __name__ == "__main__":
    main()
