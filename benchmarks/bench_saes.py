"""Benchmarks for SAEs: ``python -m benchmarks.bench_saes``.

CPU (this machine, 1 thread, ratios against a baseline timed in the same run, interleaved):

1. **All-latent top-k pass** (``saes.features.sae_features``: every latent's top-10 contexts,
   density and histogram in one streamed pass at L12) against a **plain forward** of the
   full model over the same texts (``probes.capture.run``, no hooks). Target ≤ 1.3×. The
   pass stops after the SAE's layer (13 of 30 blocks), which is most of why it is cheaper.
2. **Spliced generation**: greedy generation of 32 tokens with ``SaeSplice`` (L12, no error
   term) against plain greedy generation, tokens/s. Target: overhead ≤ 1.2× (time ratio).

GPU (H100, from ``saes/weights/training/*.json``: ``benchmarks/gpu_saes.py`` via ``saes/ship.py``):
training throughput with the model's forward included, 6 SAEs from one forward pass, and
the forward-only rate beside it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from benchmarks.common import machine_info, markdown_table, write_section

HEADING = "SAEs"
TRAINING = Path(__file__).resolve().parents[1] / "saes" / "weights" / "training"


def _best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> int:
    torch.set_num_threads(1)
    from mechscope.probes.capture import run
    from mechscope.probes.decoding import generate
    from mechscope.probes.models import load
    from mechscope.probes.texts import encode_texts, select_texts
    from mechscope.saes.features import sae_features
    from mechscope.saes.interventions import SaeSplice
    from mechscope.saes.store import load_sae

    model, _ = load()
    name = "smollm2-135m/resid-L12"
    load_sae(name, model=model, cached=True)
    seqs = [t.tolist() for t in encode_texts(model, select_texts(text_set="mixed", n_texts=24), 128)]
    n_tok = sum(len(s) for s in seqs)
    sae_features(model, sae=name, n_texts=2, max_tokens=32)  # warm-up
    t_feat, t_fwd = [], []
    for _ in range(3):
        t_fwd.append(_best(lambda: run(model, seqs, batch_size=8), 1))
        t_feat.append(_best(lambda: sae_features(model, sae=name, n_texts=24, max_tokens=128, batch_size=8), 1))
    f_ratio = min(t_feat) / min(t_fwd)

    prompt = "The history of the city begins"
    splice = SaeSplice(name)
    generate(model, prompt, max_new_tokens=4)
    t_plain, t_spl = [], []
    for _ in range(3):
        t_plain.append(_best(lambda: generate(model, prompt, max_new_tokens=32, stop_at_eos=False), 1))
        t_spl.append(_best(lambda: generate(model, prompt, max_new_tokens=32, stop_at_eos=False,
                                            interventions=[splice]), 1))
    g_ratio = min(t_spl) / min(t_plain)

    rows = [
        ["all-latent top-k pass (L12, 4096 latents) vs plain forward", f"{n_tok} tokens",
         f"{min(t_feat):.2f} s", f"{min(t_fwd):.2f} s", f"{f_ratio:.2f}×", "≤ 1.3×", "yes" if f_ratio <= 1.3 else "no"],
        ["spliced greedy generation (L12) vs plain", "32 new tokens", f"{32 / min(t_spl):.1f} tok/s",
         f"{32 / min(t_plain):.1f} tok/s", f"{g_ratio:.2f}×", "≤ 1.2×", "yes" if g_ratio <= 1.2 else "no"],
    ]
    body = [f"Machine: {machine_info()}", "",
            "The top-k pass stops after block 12 (13 of 30 blocks, no unembedding); the plain forward runs all.", "",
            markdown_table(["CPU benchmark", "size", "SAE", "baseline", "ratio", "target", "met"], rows), ""]
    gpu, fwd = [], None
    for fname in ("compare_archs.json", "train_general.json"):
        p = TRAINING / fname
        if p.exists():
            d = json.loads(p.read_text())
            t = d["train"]
            gpu.append([fname.split(".")[0], len(t["names"]), f"{t['tokens']:,}", f"{t['seconds']:.0f} s",
                        f"{t['tokens_per_s']:,.0f}"])
            fwd = d.get("forward_rate", fwd)
    if gpu:
        body += ["GPU (NVIDIA H100 80GB, fp32 SAE weights with TF32 matmuls, model forward under bf16 autocast, "
                 "SAE-Lens MultiSAETrainingRunner, batch 4096 tokens, d_sae 4096):", "",
                 markdown_table(["run", "SAEs per forward", "tokens", "wall", "tokens/s (forward incl.)"], gpu), ""]
        if fwd:
            body.append(f"Forward only (batch 64×256, all 30 layers, bf16 autocast): {fwd['forward']:,.0f} tokens/s; "
                        f"with the SAEs' hooks cached {fwd['forward+cache']:,.0f} tokens/s. Target ≥ 100k tokens/s "
                        "with every shipped layer from one forward pass.")
    write_section(HEADING, "\n".join(body))
    print("\n".join(body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
