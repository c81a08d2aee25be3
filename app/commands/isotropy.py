"""``mechscope isotropy``: IsoScore, IsoScore*, average cosine, partition score,
self-similarity and outlier dimensions of the residual stream at every depth, every head's
output, W_E and W_U (issue 9), saved as a re-runnable Result. Flags come from IsotropyParams.
``mechscope isotropy --sanity`` prints Rudman et al.'s sanity clouds instead (no model)."""

from __future__ import annotations

from app.commands.common import add_model_out, add_params, check_out_dir, load_model, params_from_args, progress, save_result


def register(sub) -> None:
    from analyses.isotropy import IsotropyParams

    p = sub.add_parser("isotropy", help="IsoScore and its rivals on every layer, head, W_E and W_U",
                       description="Isotropy scores streamed over a shipped text set: IsoScore and IsoScore* "
                                   "(Rudman et al.), average random cosine, Mu & Viswanath's partition score, "
                                   "within-sequence self-similarity (Su & Collier's isotropy = 1 − it) and outlier "
                                   "dimensions, for the residual stream at every depth, each head's output, W_E and W_U.")
    add_model_out(p, out_required=False)
    add_params(p, IsotropyParams, skip=("texts",))
    p.add_argument("--sanity", action="store_true", help="print Rudman et al.'s sanity clouds and exit (no model)")
    p.set_defaults(func=run_isotropy)


def run_isotropy(args) -> int:
    import pandas as pd

    from analyses.isotropy import IsotropyParams, isotropy, rudman_table

    if args.sanity:
        print(rudman_table().to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        return 0
    check_out_dir(args.out)
    params = params_from_args(IsotropyParams, args)
    res = isotropy(load_model(args), params, progress=progress("isotropy"))
    cols = ["depth", "isoscore", "isoscore_star", "avg_cosine", "partition", "isotropy_su", "n_outlier_var", "outlier_dims"]
    with pd.option_context("display.width", 200, "display.max_colwidth", 40):
        print(f"{res.n_tokens} tokens from {res.n_texts} texts; residual stream by depth (0 = embeddings):")
        print(res.resid()[cols].round(4).to_string(index=False))
        if not res.weights().empty:
            print(res.weights()[["cloud"] + cols[1:]].round(4).to_string(index=False))
    save_result(res, args.out)
    return 0
