"""``mechscope next-token``: the model's top-k next tokens after a prompt, saved as a Result."""

from __future__ import annotations

from mechscope.app.commands.common import add_model_out, add_params, check_out_dir, load_model, params_from_args, save_result
from mechscope.app.specs import parse_clamp, parse_mask
from mechscope.probes.errors import InputError


def register(sub) -> None:
    from mechscope.analyses.next_token import NextTokenParams

    p = sub.add_parser("next-token", help="top-k next tokens after a prompt",
                       description="Show the model's k most probable next tokens after --prompt; with --out, "
                                   "save the Result (result.json, table.csv, figure HTML) there.")
    add_model_out(p, out_required=False)
    add_params(p, NextTokenParams, skip=("prompt", "interventions"))
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--mask-head", action="append", default=[], metavar="L:H[:MODE]",
                   help="knock out head H of layer L (mode uniform|zero; repeatable)")
    p.add_argument("--clamp-neuron", action="append", default=[], metavar="L:N=V",
                   help="clamp MLP neuron N of layer L to value V (repeatable)")
    p.set_defaults(func=run)


def parse_interventions(masks: list[str], clamps: list[str]) -> list:
    """Head masks (``L:H[:MODE]``) and neuron clamps (``L:N=V``) from CLI specs."""
    out = []
    for flag, parse, specs in (("--mask-head", parse_mask, masks), ("--clamp-neuron", parse_clamp, clamps)):
        for spec in specs:
            try:
                out.append(parse(spec))
            except InputError as exc:
                raise InputError(f"{flag} {exc}") from None
    return out


def run(args) -> int:
    from mechscope.analyses.next_token import NextTokenParams, next_token
    from mechscope.probes.models import model_id

    check_out_dir(args.out)
    if not args.prompt.strip():
        raise InputError("The prompt is empty: enter some text.")
    interventions = tuple(parse_interventions(args.mask_head, args.clamp_neuron))
    params = params_from_args(NextTokenParams, args, prompt=args.prompt, interventions=interventions)
    model = load_model(args)
    result = next_token(model, params)

    print(f"{model_id(model)}: {len(result.prompt_tokens)} prompt tokens; entropy {result.entropy:.3f} nats"
          + (f"; {', '.join(iv.describe() for iv in interventions)}" if interventions else ""))
    frame = result.to_frame()
    width = max(len(repr(t)) for t in frame["token"])
    print(f"{'rank':>4}  {'token':<{width}}  {'prob':>8}  {'logprob':>8}")
    for row in frame.itertuples():
        print(f"{row.rank:>4}  {row.token!r:<{width}}  {row.prob:>8.4f}  {row.logprob:>8.3f}")
    save_result(result, args.out)
    return 0
