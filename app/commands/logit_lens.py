"""``mechscope logit-lens``: every layer × position of a prompt decoded through the unembedding
(and ``--microscope`` for the LLM-Microscope layer metrics over a text set)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("logit-lens", help="logit lens of a prompt; LLM-Microscope metrics of a text set",
                       description="Decode the residual stream after every block through the final norm and "
                                   "unembedding (--norm raw: LLM-Microscope's variant without the final norm). "
                                   "With --microscope, compute linearity / anisotropy / intrinsic dimension per "
                                   "layer and per-token nonlinearity over --texts instead.")
    p.add_argument("--prompt", default=None, help="the text to decode (logit lens)")
    p.add_argument("--target", default=None, help="a single token to track across layers (default: the final top-1)")
    p.add_argument("--norm", choices=["final", "raw"], default="final", help="final norm + W_U (default) or raw W_U")
    p.add_argument("--k", type=int, default=5, help="top tokens per cell (default 5)")
    p.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--microscope", action="store_true", help="LLM-Microscope metrics over --texts instead")
    p.add_argument("--texts", default="mixed", help="text set name for --microscope (default mixed)")
    p.add_argument("--max-tokens", type=int, default=4096, help="tokens used by --microscope (default 4096)")
    p.add_argument("--model", default=None, help="model name (default: the embedded smollm2-135m)")
    p.add_argument("--out", type=Path, default=None, help="directory to save the Result in")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from app.commands.next_token import check_out_dir
    from probes.errors import InputError
    from probes.models import DEFAULT_MODEL, load

    check_out_dir(args.out)
    if args.microscope:
        from analyses.microscope import microscope

        model, spec = load(args.model or DEFAULT_MODEL)
        res = microscope(model, texts=args.texts, max_tokens=args.max_tokens, progress=True)
        print(f"{spec.name}: {len(res.tokens)} tokens from {res.tokens['text'].nunique()} texts")
        print(res.to_frame().to_string(index=False, float_format=lambda x: f"{x:.4f}"))
        print("\nnonlinearity by token class:")
        print(res.by_class().to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    else:
        from analyses.logit_lens import logit_lens

        if not args.prompt or not args.prompt.strip():
            raise InputError("Give --prompt TEXT (or --microscope for the text-set metrics).")
        model, spec = load(args.model or DEFAULT_MODEL)
        res = logit_lens(model, args.prompt, target=args.target, norm=args.norm, k=args.k, prepend_bos=args.prepend_bos)
        last = len(res.tokens) - 1
        print(f"{spec.name}, norm={args.norm}: last position {res.tokens[last]!r}; target {res.target_tokens[last]!r}; "
              f"first layer where the final answer is top-1: {res.first_top1_layer[last]}")
        print(f"{'layer':>5}  {'top token':<16} {'p':>7}  {'target rank':>11}  {'p(target)':>9}  {'KL':>7}")
        for layer in range(res.top_ids.shape[0]):
            print(f"{layer:>5}  {res.top_tokens[layer, last, 0]!r:<16} {float(res.top_probs[layer, last, 0]):>7.4f}  "
                  f"{int(res.target_rank[layer, last]):>11}  {float(res.target_prob[layer, last]):>9.4f}  "
                  f"{float(res.kl_to_final[layer, last]):>7.3f}")
    if args.out:
        res.save(args.out, html=True)
        print(f"saved to {args.out}")
    return 0
