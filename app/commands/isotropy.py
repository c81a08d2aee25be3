"""``mechscope isotropy``: IsoScore, IsoScore*, average cosine, partition score,
self-similarity and outlier dimensions of the residual stream at every depth, every head's
output, W_E and W_U, saved as a re-runnable Result. Flags come from IsotropyParams.
``mechscope isotropy --sanity`` prints Rudman et al.'s sanity clouds instead (no model)."""

from __future__ import annotations

from mechscope.app.commands.common import add_model_out, add_params, check_out_dir, load_model, params_from_args, progress, save_result


def register(sub) -> None:
    from mechscope.analyses.isotropy import IsotropyParams

    p = sub.add_parser("isotropy", help="IsoScore and its rivals on every layer, head, W_E and W_U",
                       description="Isotropy scores streamed over a shipped text set: IsoScore and IsoScore* "
                                   "(Rudman et al.), average random cosine, Mu & Viswanath's partition score, "
                                   "within-sequence self-similarity (Su & Collier's isotropy = 1 − it) and outlier "
                                   "dimensions, for the residual stream at every depth, each head's output, W_E and W_U.")
    add_model_out(p, out_required=False)
    add_params(p, IsotropyParams)
    p.add_argument("--sanity", action="store_true", help="print Rudman et al.'s sanity clouds and exit (no model)")
    p.set_defaults(func=run_isotropy)

    from mechscope.analyses.isotropy import DecodingIsotropyParams, WhiteningParams

    w = sub.add_parser("isotropy-whitening", help="ZCA / Zipfian / outlier-removal whitening: fit on one set, apply to another",
                       description="Fit whitening transforms at one residual depth on one text set, apply them to "
                                   "another, and score both clouds before and after; --save-dir keeps each fitted "
                                   "whitening as safetensors + sha256 (usable as a Playground intervention).")
    add_model_out(w, out_required=False)
    add_params(w, WhiteningParams)
    w.set_defaults(func=run_whitening)

    c = sub.add_parser("isotropy-decoding", help="greedy vs nucleus sampling vs contrastive search: rep-n, diversity, isotropy",
                       description="Su et al.'s comparison: rep-2/3/4, diversity and the isotropy of the generated "
                                   "text's final-layer states, for greedy, top-p sampling and contrastive search.")
    add_model_out(c, out_required=False)
    add_params(c, DecodingIsotropyParams)
    c.set_defaults(func=run_decoding)


def run_isotropy(args) -> int:
    import pandas as pd

    from mechscope.analyses.isotropy import IsotropyParams, isotropy, rudman_table

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


def run_whitening(args) -> int:
    from mechscope.analyses.isotropy import WhiteningParams, whitening_effect

    check_out_dir(args.out)
    params = params_from_args(WhiteningParams, args)
    res = whitening_effect(load_model(args), params, progress=progress("whitening"))
    cols = ["set", "method", "isoscore", "isoscore_star", "avg_cosine", "partition", "isotropy_su",
            "n_outlier_var", "cov_distance_to_identity"]
    print(f"site {res.site}; removed outlier dimensions: {list(res.removed_dims)}")
    print(res.scores[cols].round(4).to_string(index=False))
    for m, a in res.artefacts.items():
        print(f"{m}: {a['path']}  sha256 {a['sha256']}")
    save_result(res, args.out)
    return 0


def run_decoding(args) -> int:
    from mechscope.analyses.isotropy import DecodingIsotropyParams, decoding_isotropy

    check_out_dir(args.out)
    params = params_from_args(DecodingIsotropyParams, args)
    res = decoding_isotropy(load_model(args), params, progress=progress("decoding"))
    print(res.summary().round(3).to_string(index=False))
    save_result(res, args.out)
    return 0
