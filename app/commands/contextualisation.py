"""``mechscope contextualisation``: LLM-Microscope's context memory per token — how well a
token's k-token prefix is reconstructed from its hidden states (a linear adapter into the
frozen model; :mod:`analyses.contextualisation`). Flags and defaults from ContextParams."""

from __future__ import annotations

from mechscope.app.commands.common import add_model_out, add_params, check_out_dir, load_model, params_from_args, progress, save_result


def register(sub) -> None:
    from mechscope.analyses.contextualisation import ContextParams

    p = sub.add_parser("contextualisation", help="prefix reconstruction from a token's states (LLM-Microscope)",
                       description="Train a linear adapter from each token's all-layer states to an input embedding "
                                   "from which the frozen model reconstructs the token's prefix; score held-out "
                                   "tokens by the reconstruction loss (lower = more context stored).")
    add_model_out(p, out_required=False)
    add_params(p, ContextParams)
    p.set_defaults(func=run)


def run(args) -> int:
    from mechscope.analyses.contextualisation import ContextParams, contextualisation

    check_out_dir(args.out)
    params = params_from_args(ContextParams, args)
    model = load_model(args)
    res = contextualisation(model, params, progress=progress("adapter training"))
    d = res.by_distance()
    print(f"prefix reconstruction over {len(res.tokens)} held-out tokens (k = {params.prefix}); "
          f"final training loss {res.train_curve[-1]:.3f}")
    print("distance back   loss  control   gain")
    for r in d.itertuples():
        print(f"{r.distance:>13}  {r.loss:5.3f}  {r.control:7.3f}  {r.gain:+5.3f}")
    print(res.to_frame().to_string(index=False))
    save_result(res, args.out)
    return 0
