"""``mechscope next-token``: the model's top-k next tokens after a prompt, saved as a Result."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from probes.errors import InputError

_MASK_RE = re.compile(r"^(\d+):(\d+)(?::(uniform|zero))?$")
_CLAMP_RE = re.compile(r"^(\d+):(\d+)=([-+0-9.eE]+)$")


def register(sub) -> None:
    p = sub.add_parser("next-token", help="top-k next tokens after a prompt",
                       description="Show the model's k most probable next tokens after --prompt; with --out, "
                                   "save the Result (result.json, table.csv, figure HTML) there.")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--model", default=None, help="model name (default: the embedded smollm2-135m)")
    p.add_argument("--k", type=int, default=10, help="how many tokens to list (default 10)")
    p.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=None,
                   help="prepend the model's BOS token (default: the model's policy)")
    p.add_argument("--mask-head", action="append", default=[], metavar="L:H[:MODE]",
                   help="knock out head H of layer L (mode uniform|zero; repeatable)")
    p.add_argument("--clamp-neuron", action="append", default=[], metavar="L:N=V",
                   help="clamp MLP neuron N of layer L to value V (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="directory to save the Result in")
    p.set_defaults(func=run)


def parse_interventions(masks: list[str], clamps: list[str]) -> list:
    from probes.interventions import HeadMask, NeuronClamp

    out: list = []
    for m in masks:
        g = _MASK_RE.match(m.strip())
        if not g:
            raise InputError(f"--mask-head {m!r}: expected LAYER:HEAD or LAYER:HEAD:MODE (mode uniform|zero).")
        out.append(HeadMask(int(g.group(1)), int(g.group(2)), g.group(3) or "uniform"))
    for c in clamps:
        g = _CLAMP_RE.match(c.strip())
        try:
            value = float(g.group(3)) if g else None
        except ValueError:
            value = None
        if value is None:
            raise InputError(f"--clamp-neuron {c!r}: expected LAYER:NEURON=VALUE, e.g. 3:17=5.0.")
        out.append(NeuronClamp(int(g.group(1)), int(g.group(2)), value=value))
    return out


def check_out_dir(out: Path | None) -> None:
    """Refuse to replace a file or a folder that holds something other than a saved result."""
    if out is None:
        return
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a directory.")
    if out.is_dir() and any(out.iterdir()) and not (out / "result.json").is_file():
        raise InputError(f"--out {out} is a non-empty directory that holds no saved result; choose another.")


def run(args: argparse.Namespace) -> int:
    from analyses.next_token import next_token
    from probes.models import DEFAULT_MODEL, load

    check_out_dir(args.out)
    if not args.prompt.strip():
        raise InputError("The prompt is empty: enter some text.")
    interventions = parse_interventions(args.mask_head, args.clamp_neuron)
    model, spec = load(args.model or DEFAULT_MODEL)
    result = next_token(model, args.prompt, k=args.k, prepend_bos=args.prepend_bos, interventions=interventions)

    print(f"{spec.name}: {len(result.prompt_tokens)} prompt tokens; entropy {result.entropy:.3f} nats"
          + (f"; {', '.join(iv.describe() for iv in interventions)}" if interventions else ""))
    frame = result.to_frame()
    width = max(len(repr(t)) for t in frame["token"])
    print(f"{'rank':>4}  {'token':<{width}}  {'prob':>8}  {'logprob':>8}")
    for row in frame.itertuples():
        print(f"{row.rank:>4}  {row.token!r:<{width}}  {row.prob:>8.4f}  {row.logprob:>8.3f}")
    if args.out is not None:
        path = result.save(args.out, html=True)
        print(f"saved to {path}")
    return 0
