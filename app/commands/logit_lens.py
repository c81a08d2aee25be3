"""``mechscope logit-lens``: every layer × position of a prompt decoded through the unembedding
(and ``--microscope`` for the LLM-Microscope layer metrics over a text set). Flags and their
defaults come from :class:`analyses.logit_lens.LogitLensParams` and
:class:`analyses.microscope.MicroscopeParams`."""

from __future__ import annotations

import argparse

from mechscope.app.commands.common import (
    add_model_out,
    add_params,
    check_out_dir,
    load_model,
    params_from_args,
    progress,
    save_result,
)


def register(sub) -> None:
    from mechscope.analyses.logit_lens import LogitLensParams
    from mechscope.analyses.microscope import MicroscopeParams

    p = sub.add_parser("logit-lens", help="logit lens of a prompt; LLM-Microscope metrics of a text set",
                       description="Decode the residual stream after every block through the final norm and "
                                   "unembedding (--norm raw: LLM-Microscope's variant without the final norm). "
                                   "With --microscope, compute linearity / anisotropy / intrinsic dimension per "
                                   "state and per-token nonlinearity over --text-set instead.")
    add_model_out(p, out_required=False)
    p.add_argument("--prompt", default=None, help="the text to decode (logit lens)")
    p.add_argument("--target", default=None, help="a single token to track across layers (default: the final top-1)")
    add_params(p, LogitLensParams, skip=("prompt", "target"))
    if not any(a.dest == "pos" for a in p._actions):  # optional fields the generic helper may skip
        p.add_argument("--pos", type=int, default=LogitLensParams.pos,
                       help="position the trajectory figure shows (default: the last)")
    if not any(a.dest == "prepend_bos" for a in p._actions):
        p.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=LogitLensParams.prepend_bos,
                       help="prepend the model's BOS token (default: the model's policy)")
    p.add_argument("--microscope", action="store_true", help="LLM-Microscope metrics over --text-set instead")
    add_params(p, MicroscopeParams)
    p.set_defaults(func=run)


def run(args) -> int:
    from mechscope.probes.errors import InputError
    from mechscope.probes.models import model_id

    check_out_dir(args.out)
    if args.microscope:
        from mechscope.analyses.microscope import MicroscopeParams, microscope

        params = params_from_args(MicroscopeParams, args)
        model = load_model(args)
        res = microscope(model, params, progress=progress("microscope"))
        print(f"{model_id(model)}: {len(res.tokens)} tokens from {res.tokens['text'].nunique()} texts; "
              f"TwoNN estimator {params.id_method}")
        print(res.to_frame().to_string(index=False, float_format=lambda x: f"{x:.4f}"))
        print("\nnonlinearity by token class:")
        print(res.by_class().to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    else:
        from mechscope.analyses.logit_lens import LogitLensParams, logit_lens

        if not args.prompt or not args.prompt.strip():
            raise InputError("Give --prompt TEXT (or --microscope for the text-set metrics).")
        params = params_from_args(LogitLensParams, args, prompt=args.prompt, target=args.target)
        model = load_model(args)
        res = logit_lens(model, params)
        last = len(res.tokens) - 1
        print(f"{model_id(model)}, norm={params.norm}: last position {res.tokens[last]!r}; target "
              f"{res.target_tokens[last]!r}; first layer where the final answer is top-1: {res.first_top1_layer[last]}")
        print(f"{'layer':>5}  {'top token':<16} {'p':>7}  {'target rank':>11}  {'p(target)':>9}  {'KL':>7}")
        for layer in range(res.top_ids.shape[0]):
            print(f"{layer:>5}  {res.top_tokens[layer, last, 0]!r:<16} {float(res.top_probs[layer, last, 0]):>7.4f}  "
                  f"{int(res.target_rank[layer, last]):>11}  {float(res.target_prob[layer, last]):>9.4f}  "
                  f"{float(res.kl_to_final[layer, last]):>7.3f}")
    save_result(res, args.out)
    return 0
