"""``mechscope playground``: baseline vs intervened generation with any registered decoding
strategy (greedy, sample, contrastive, decore, cad, contrastive_decoding, dola, …), saved
as a Result with ``--out``."""

from __future__ import annotations

import json

from mechscope.app.commands.common import add_model_out, add_params, check_out_dir, load_model, params_from_args, save_result
from mechscope.app.commands.next_token import parse_interventions
from mechscope.probes.errors import InputError


def register(sub) -> None:
    from mechscope.analyses.playground import PlaygroundParams

    p = sub.add_parser("playground", help="generate with a decoding strategy, baseline vs intervened",
                       description="Continue --prompt twice — baseline and intervened — and print both texts and "
                                   "each baseline token's probability under both (Δp). --strategy picks a "
                                   "registered decoding strategy, --strategy-args its fields as JSON, e.g. "
                                   "--strategy cad --strategy-args '{\"context\": \"...\", \"alpha\": 0.5}' "
                                   "--strategy-side intervened. With --out, save the Result there.")
    add_model_out(p, out_required=False)
    add_params(p, PlaygroundParams, skip=("prompt", "interventions", "strategy", "kv_policy"))
    p.add_argument("--prompt", required=True, help="the text to continue (CAD: the query)")
    p.add_argument("--strategy", default="greedy", help="a registered decoding strategy (default greedy)")
    p.add_argument("--strategy-args", default="{}", metavar="JSON", help="the strategy's fields as a JSON object")
    p.add_argument("--mask-head", action="append", default=[], metavar="L:H[:MODE]",
                   help="knock out head H of layer L in the intervened run (repeatable)")
    p.add_argument("--clamp-neuron", action="append", default=[], metavar="L:N=V",
                   help="clamp MLP neuron N of layer L to value V in the intervened run (repeatable)")
    p.set_defaults(func=run)


def strategy_from_args(name: str, fields: str):
    """A registered strategy built from its name and a JSON object of fields."""
    from mechscope.probes import cad, contrastive, contrastive_decoding, decore, dola  # noqa: F401  (register their strategies)
    from mechscope.probes.decoding import STRATEGIES

    try:
        values = json.loads(fields)
    except json.JSONDecodeError as exc:
        raise InputError(f"--strategy-args is not JSON: {exc}") from None
    if not isinstance(values, dict):
        raise InputError("--strategy-args must be a JSON object of the strategy's fields.")
    return STRATEGIES.from_dict({"kind": name, "family": "strategy", **values})


def run(args) -> int:
    from mechscope.analyses.playground import PlaygroundParams, compare_generations

    check_out_dir(args.out)
    if not args.prompt.strip():
        raise InputError("The prompt is empty: enter some text.")
    strategy = strategy_from_args(args.strategy, args.strategy_args)
    interventions = tuple(parse_interventions(args.mask_head, args.clamp_neuron))
    params = params_from_args(PlaygroundParams, args, prompt=args.prompt, interventions=interventions,
                              strategy=strategy)
    model = load_model(args)
    result = compare_generations(model, params)
    print(f"baseline:   {result.baseline_text!r}")
    print(f"intervened: {result.intervened_text!r}  ({strategy.name}, strategy on {params.strategy_side})")
    for row in result.to_frame().itertuples():
        print(f"{row.pos:>4}  {row.token!r:<16} p_base {row.p_base:.4f}  p_int {row.p_intervened:.4f}  "
              f"Δp {row.delta_p:+.4f}")
    save_result(result, args.out)
    return 0
