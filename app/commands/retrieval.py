"""``mechscope retrieval-heads``, ``mechscope niah`` and ``mechscope retrieval-masking``:
retrieval-head detection (Wu et al. 2024), NIAH accuracy (optionally with heads
masked) and the causal masking curves, each saved as a re-runnable Result. Ctrl-C stops a
long run and saves the tests finished so far (the Result says ``complete: false``)."""

from __future__ import annotations

from pathlib import Path

from mechscope.app.commands.common import add_model_out, add_params, check_out_dir, load_model, params_from_args, progress, save_result
from mechscope.app.commands.kv import add_kv_policy_flags, kv_policy_from_args
from mechscope.app.specs import parse_heads
from mechscope.probes.errors import InputError


def register(sub) -> None:
    from mechscope.analyses.niah import NiahParams
    from mechscope.analyses.retrieval import MaskingParams, RetrievalParams

    p = sub.add_parser("retrieval-heads", help="retrieval score of every head over a needle-in-a-haystack grid",
                       description="Wu et al.'s retrieval score: greedy NIAH answers, top-1 attended position per "
                                   "head at each step, copy credit 1/|answer tokens| for copies from the needle's "
                                   "answer part, counted tests only (ROUGE-1 recall of the answer part > 0.5); "
                                   "heads > 0.1 are retrieval heads. Also an induction-score proxy.")
    add_model_out(p)
    add_params(p, RetrievalParams)
    p.set_defaults(func=run_detect)

    n = sub.add_parser("niah", help="needle-in-a-haystack accuracy over lengths × depths (heads masked on request)",
                       description="Greedy NIAH accuracy (ROUGE-1 recall of the needle's answer part > 0.5) on the "
                                   "shipped needles and long text.")
    add_model_out(n)
    add_params(n, NiahParams, skip=("interventions", "kv_policy"))
    n.add_argument("--mask", action="append", default=[], metavar="L:H",
                   help="mask this head (uniform attention; while decoding only unless --mask-scope prompt_and_decode)")
    n.add_argument("--mask-top", type=int, default=0, metavar="K", help="mask the top K heads of --heads-from")
    n.add_argument("--heads-from", type=Path, default=None, help="a saved retrieval-heads result")
    add_kv_policy_flags(n)
    n.set_defaults(func=run_niah)

    m = sub.add_parser("retrieval-masking", help="NIAH accuracy with top-k retrieval heads vs k random heads masked",
                       description="The causal check: mask the top-k retrieval heads (uniform attention) against k "
                                   "random heads from outside the top --random-outside-top (several seeds), k over a "
                                   "range. By default heads are masked while decoding only, the prompt prefilled "
                                   "unmasked, as the reference does (--mask-scope).")
    add_model_out(m)
    add_params(m, MaskingParams, skip=("heads",))
    m.add_argument("--heads-from", type=Path, default=None,
                   help="a saved retrieval-heads result (default: detect on the same grid first)")
    m.set_defaults(func=run_masking)


def _ranked_from(path: Path | None) -> list[tuple[int, int]]:
    if path is None:
        return []
    from mechscope.analyses.catalog import load_result
    from mechscope.analyses.retrieval import RetrievalResult

    res = load_result(path)
    if not isinstance(res, RetrievalResult):
        raise InputError(f"{path} holds a {res.kind} result, not retrieval-heads.")
    return [(l, h) for l, h, _ in res.ranked()]


def _note_partial(res) -> None:
    if not res.complete:
        print("interrupted: saving the tests finished so far (complete = false)")


def run_detect(args) -> int:
    from mechscope.analyses.retrieval import RetrievalParams, retrieval_heads

    check_out_dir(args.out)
    params = params_from_args(RetrievalParams, args)
    res = retrieval_heads(load_model(args), params, progress=progress("NIAH tests"))
    _note_partial(res)
    s = res.summary()
    print(f"{s['counted']} of {s['tests']} tests counted ({s['prompt_format']} prompt); "
          f"{s['n_above']} heads ({100 * s['fraction_above']:.1f}%) score > {params.threshold:g}")
    print("top heads: " + ", ".join(f"L{l}H{h} {v:.3f}" for l, h, v in res.ranked()[:10]))
    if "spearman_induction" in s:
        print(f"Spearman(retrieval, induction proxy) = {s['spearman_induction']:.3f}")
    save_result(res, args.out)
    return 0


def run_niah(args) -> int:
    from mechscope.analyses.niah import NiahParams, niah
    from mechscope.probes.interventions import HeadMask

    check_out_dir(args.out)
    heads = parse_heads(args.mask)
    if args.mask_top:
        ranked = _ranked_from(args.heads_from)
        if not ranked:
            raise InputError("--mask-top needs --heads-from (a saved retrieval-heads result).")
        if args.mask_top > len(ranked):
            raise InputError(f"--mask-top {args.mask_top} is larger than the number of heads ({len(ranked)}).")
        heads += ranked[: args.mask_top]
    model = load_model(args)
    params = params_from_args(NiahParams, args, interventions=tuple(HeadMask(l, h) for l, h in heads),
                              kv_policy=kv_policy_from_args(args, model))
    res = niah(model, params, progress=progress("NIAH tests"))
    _note_partial(res)
    policy = params.kv_policy
    kv = policy if isinstance(policy, str) else (policy.describe() if hasattr(policy, "describe") else policy.name)
    print(f"NIAH accuracy {res.accuracy:.3f} over {len(res.tests)} tests ({res.prompt_format} prompt; KV cache: {kv})")
    save_result(res, args.out)
    return 0


def run_masking(args) -> int:
    from mechscope.analyses.retrieval import MaskingParams, retrieval_masking

    check_out_dir(args.out)
    ranked = _ranked_from(args.heads_from)  # the whole ranking: random heads come from outside its top
    params = params_from_args(MaskingParams, args, heads=tuple(ranked))
    res = retrieval_masking(load_model(args), params, progress=progress("masking"))
    _note_partial(res)
    print(f"heads masked during {'decoding only' if res.mask_scope == 'decode' else 'prompt and decoding'}; "
          f"random heads {res.random_pool}")
    print(res.summary().round(3).to_string(index=False))
    save_result(res, args.out)
    return 0
