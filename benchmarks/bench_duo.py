"""Benchmark for DuoAttention gates: ``python -m benchmarks.bench_duo``.

Trains the gates (``analyses.duo_attention.duo_gates``) on the embedded model and reports:
the gate of every KV head, how many are ≥ 0.5, their overlap with Wu et al.'s retrieval
heads (KV head = query head // 3; by default the 9 heads > 0.1 recorded in RESULTS.md, or a
saved ``--retrieval-from`` result, which also gives a Spearman correlation), the cost of one
training step as a ratio to one plain forward pass of the same length (measured in the same
run, interleaved), and a held-out deployment check: the distillation MSE when the top-m
gates' KV heads attend fully and all others see sinks + window only, against m random KV
heads (``--random-draws`` seeds) and against all-streaming.

CPU (the recorded run; bounded by ``--time-budget``)::

    python -m benchmarks.bench_duo --steps 24 --min-length 400 --max-length 700 --time-budget 360

GPU (H200; expected ≈ 150 s including the model load, hard stop at the time budget)::

    PYTHONUNBUFFERED=1 python -m benchmarks.bench_duo --device cuda --steps 400 --min-length 1000 \\
        --max-length 4000 --n-passkeys 5 --passkey-words 16 --n-sink 64 --window 256 --lr 0.05 \\
        --eval-samples 8 --time-budget 170 --out gpu_duo.md --verbose
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import add_output_flags, interleaved, machine_info, markdown_table, publish

HEADING = "DuoAttention gates"
RESULTS_HEADS = "L17H3,L18H6,L23H2,L18H7,L17H4,L23H7,L17H5,L21H8,L24H4"  # RESULTS.md, retrieval section: > 0.1


def run(args) -> str:
    from mechscope.analyses.duo_attention import DuoParams, duo_gates, gate_score_spearman, split_mse
    from mechscope.probes.passkey import passkey_samples
    from mechscope.app.specs import parse_heads
    from mechscope.probes.duo import final_hidden
    from mechscope.probes.interventions import applied
    from mechscope.probes.models import load

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    model = load(args.model, device=args.device).model
    det = None
    if args.retrieval_from:
        from mechscope.analyses.catalog import load_result

        det = load_result(args.retrieval_from)
        heads = det.retrieval_heads()
        source = f"saved result {args.retrieval_from} ({len(heads)} heads > {det.params.threshold:g})"
    else:
        heads = parse_heads(args.retrieval_heads)
        source = f"RESULTS.md retrieval section ({len(heads)} heads > 0.1)"
    params = DuoParams(steps=args.steps, min_length=args.min_length, max_length=args.max_length,
                       n_passkeys=args.n_passkeys, passkey_words=args.passkey_words, n_sink=args.n_sink,
                       window=args.window, lr=args.lr, reg_weight=args.reg_weight, full_branch=args.full_branch,
                       seed=args.seed, retrieval_heads=tuple(heads))
    t_start = time.perf_counter()
    deadline = t_start + args.time_budget if args.time_budget else None
    last = {"t": t_start}

    def progress(done, total):
        if args.verbose:
            now = time.perf_counter()
            print(f"step {done}/{total}: {now - last['t']:.1f} s", flush=True)
            last["t"] = now

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    res = duo_gates(model, params, progress=progress,
                    stop=(lambda: time.perf_counter() > deadline) if deadline else None)
    t_train = time.perf_counter() - t_start
    peak = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if args.device.startswith("cuda") else ""
    if args.save:
        res.save(args.save, html=True)
    s = res.summary()
    o = res.overlap()

    # one training step vs one plain forward pass, same length, interleaved rounds
    sample = passkey_samples(model, 1, (args.max_length, args.max_length), args.n_passkeys, args.passkey_words,
                             args.seed + 7)[0]
    tokens = torch.tensor([sample.ids], device=model.cfg.device)

    def forward():
        with torch.no_grad(), applied(model):
            final_hidden(model, tokens)

    def step():
        from mechscope.analyses.duo_attention import train_gates

        train_gates(model, [(sample.ids, sample.answer_start)], args.n_sink, args.window, args.lr, args.reg_weight,
                    args.full_branch, init=0.5)

    timing = interleaved({"forward": forward, "train step": step}, rounds=args.rounds, device=args.device)
    t_fwd, t_step = timing["forward"].median, timing["train step"].median

    # held-out deployment check: top-m gates full vs m random KV heads full vs none
    held = [(x.ids, x.answer_start) for x in passkey_samples(model, args.eval_samples, (args.min_length, args.max_length),
                                                             args.n_passkeys, args.passkey_words, args.seed + 1)]
    m = max(s["retrieval"], 1)
    L, K = res.gates.shape
    order = sorted(((l, k) for l in range(L) for k in range(K)), key=lambda x: (-res.gates[x], x))
    duo_set = set(order[:m])
    rows = [["DuoAttention: top gates full", m, f"{split_mse(model, held, duo_set, args.n_sink, args.window):.4g}"]]
    rnd = []
    for seed in range(args.random_draws):
        pick = np.random.default_rng(seed).choice(L * K, size=m, replace=False)
        rnd.append(split_mse(model, held, {(int(i) // K, int(i) % K) for i in pick}, args.n_sink, args.window))
    rows.append([f"random KV heads full ({args.random_draws} draws)", m,
                 f"{np.mean(rnd):.4g} ± {np.std(rnd):.2g} (min {np.min(rnd):.4g})"])
    rows.append(["all streaming", 0, f"{split_mse(model, held, set(), args.n_sink, args.window):.4g}"])

    info = machine_info()
    gates_txt = "; ".join(f"L{l}: " + " ".join(f"{res.gates[l, k]:.2f}" for k in range(K)) for l in range(L))
    spear = f", Spearman(gates, KV-grouped max score) {gate_score_spearman(res.gates, det.head_scores, res.group):.3f}" if det else ""
    body = (f"Machine: {info.get('cpu')}, {info.get('cores')} cores, load average {info.get('load average (1 min)', '?')} at the end, torch threads "
            f"{torch.get_num_threads()}, device {args.device}{' (' + info['gpu'] + ')' if 'gpu' in info else ''}{peak}; model {args.model}. Training: {s['steps']} of "
            f"{args.steps} steps ({'complete' if res.complete else 'stopped by the time budget'}), contexts "
            f"{args.min_length}–{args.max_length} tokens, {args.n_passkeys} passkeys × {args.passkey_words} words, "
            f"S = {args.n_sink} sinks + W = {args.window} window, lr {args.lr}, λ {args.reg_weight}, full branch "
            f"{args.full_branch}, seed {args.seed}; {t_train:.0f} s. Distillation MSE: first step "
            f"{res.log['distill'].iloc[0]:.3g}, last {s['final_distill']:.3g}.\n\n"
            f"**{s['retrieval']} of {s['kv_heads']} KV heads have α ≥ {params.threshold:g}** (mean α {s['mean_gate']:.3f}). "
            f"Overlap with Wu et al.'s retrieval heads from the {source} = {o['n_retrieval']} KV heads: {o['both']} "
            f"shared, Jaccard {o['jaccard']:.2f}, precision {o['precision']:.2f}, recall {o['recall']:.2f}{spear}.\n\n"
            f"Highest gates: " + ", ".join(f"L{l}K{k} {res.gates[l, k]:.2f}" for l, k in order[:12]) + ".\n\n"
            f"Cost of one training step at {len(sample.ids)} tokens: {t_step:.2f} s vs one plain forward "
            f"{t_fwd:.2f} s = **{t_step / t_fwd:.1f}×** (medians of {args.rounds} interleaved rounds).\n\n"
            f"Held-out deployment check ({len(held)} new samples; MSE of final hidden states on the answer tail vs "
            f"the full model, binary gates):\n\n"
            + markdown_table(["KV heads with full attention", "m", "distillation MSE"], rows) + "\n\n"
            f"All gates (layer: KV heads 0..{K - 1}): {gates_txt}\n")
    return body


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--min-length", type=int, default=400)
    ap.add_argument("--max-length", type=int, default=700)
    ap.add_argument("--n-passkeys", type=int, default=2)
    ap.add_argument("--passkey-words", type=int, default=8)
    ap.add_argument("--n-sink", type=int, default=16)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--reg-weight", type=float, default=0.05)
    ap.add_argument("--full-branch", default="reference", choices=["reference", "shared"])
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--retrieval-heads", default=RESULTS_HEADS)
    ap.add_argument("--retrieval-from", default=None, help="a saved retrieval-heads result (overrides --retrieval-heads)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds")
    ap.add_argument("--eval-samples", type=int, default=3)
    ap.add_argument("--random-draws", type=int, default=3)
    ap.add_argument("--save", default=None, help="also save the duo-gates Result in this folder")
    ap.add_argument("--time-budget", type=float, default=0, help="stop training after this many seconds (0: none)")
    add_output_flags(ap)
    args = ap.parse_args(argv)
    publish(HEADING, run(args), args.out, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
