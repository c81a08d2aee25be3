"""``mechscope kv-curve`` (NIAH accuracy vs KV memory, :mod:`analyses.kv_curve`) and the
KV-cache policy flags shared by commands that decode (``mechscope niah``): any policy
registered in :data:`probes.kv_policies.KV_POLICIES` ("full", "sink_window", "window",
"razor", ...) or "none" (no cache), with its parameters. RazorAttention's full-KV heads come
from ``--kv-heads`` (KV heads, ``L17K1,...``) or ``--kv-heads-from`` a saved
retrieval-heads result (top ``--kv-top`` KV heads by the max score of their query heads) or
duo-gates result (its KV heads with α ≥ threshold, or the top ``--kv-top`` gates)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from mechscope.probes.errors import InputError

_KV_HEAD = re.compile(r"^L(\d+)K(\d+)$", re.IGNORECASE)


def add_kv_policy_flags(parser) -> None:
    from mechscope.probes.kv_policies import KV_POLICIES

    parser.add_argument("--kv-policy", default="full", choices=KV_POLICIES.names() + ["none"],
                        help="KV-cache policy while decoding (default full)")
    parser.add_argument("--kv-sink", type=int, default=None, metavar="S", help="sink tokens kept (policy default if unset)")
    parser.add_argument("--kv-window", type=int, default=None, metavar="W",
                        help="recent tokens kept; razor: the minimum buffer S0 (--kv-buffer ratio) or the whole buffer "
                             "(fixed) (policy default if unset)")
    parser.add_argument("--kv-buffer", default=None, choices=["ratio", "fixed"],
                        help="razor: non-retrieval heads keep max(S0, N/C) recent tokens (ratio, the paper's; default) "
                             "or a fixed window W")
    parser.add_argument("--kv-ratio", type=float, default=None, metavar="C",
                        help="razor: compression ratio C of the ratio buffer (policy default if unset)")
    parser.add_argument("--kv-heads", default="", metavar="L17K1,...", help="razor: KV heads that keep the full cache")
    parser.add_argument("--kv-heads-from", type=Path, default=None,
                        help="razor: a saved retrieval-heads or duo-gates result giving the full-KV heads")
    parser.add_argument("--kv-top", type=int, default=None, metavar="M", help="razor: how many KV heads from --kv-heads-from")
    parser.add_argument("--no-kv-compensation", action="store_true", help="razor: no compensation token")


def parse_kv_heads(text: str) -> list[tuple[int, int]]:
    out = []
    for part in (p for p in re.split(r"[,\s]+", text or "") if p):
        m = _KV_HEAD.match(part)
        if not m:
            raise InputError(f"{part!r}: expected a KV head as L<layer>K<kv head>, e.g. L17K1.")
        out.append((int(m.group(1)), int(m.group(2))))
    return out


def kv_heads_from(path: Path, model, top: int | None) -> list[tuple[int, int]]:
    """Ranked KV heads from a saved retrieval-heads (grouped max score) or duo-gates result."""
    from mechscope.analyses.catalog import load_result
    from mechscope.analyses.duo_attention import DuoResult
    from mechscope.analyses.kv_curve import kv_ranking
    from mechscope.analyses.retrieval import RetrievalResult

    res = load_result(path)
    if isinstance(res, RetrievalResult):
        ranked = [(l, k) for l, k, _ in kv_ranking(res.head_scores, model)]
        if top is None:
            raise InputError("--kv-heads-from a retrieval-heads result needs --kv-top M (how many KV heads keep full KV).")
    elif isinstance(res, DuoResult):
        ranked = [(l, k) for l, k, _ in kv_ranking(res.gates, None)]
        if top is None:
            return res.retrieval_kv_heads()
    else:
        raise InputError(f"{path} holds a {res.kind} result, not retrieval-heads or duo-gates.")
    if top < 0 or top > len(ranked):
        raise InputError(f"--kv-top {top} is outside 0..{len(ranked)}.")
    return ranked[:top]


def kv_policy_from_args(args, model):
    """The policy object (or "full" / "none") the flags describe."""
    from mechscope.probes.kv_policies import KV_POLICIES

    name = args.kv_policy
    razor_only = args.kv_heads or args.kv_heads_from is not None or args.kv_top is not None or args.no_kv_compensation
    if name != "razor" and razor_only:
        raise InputError("--kv-heads, --kv-heads-from, --kv-top and --no-kv-compensation apply to --kv-policy razor only.")
    sized = (("--kv-sink", "n_sink", args.kv_sink), ("--kv-window", "window", args.kv_window),
             ("--kv-buffer", "buffer", args.kv_buffer), ("--kv-ratio", "compression_ratio", args.kv_ratio))
    if name in ("full", "none"):
        if any(value is not None for _, _, value in sized):
            raise InputError(f"--kv-sink/--kv-window/--kv-buffer/--kv-ratio do not apply to --kv-policy {name}.")
        return name
    cls = KV_POLICIES.get(name)
    names = {f.name for f in dataclasses.fields(cls)}
    fields = {}
    for flag, key, value in sized:
        if value is not None:
            if key not in names:
                raise InputError(f"{flag} does not apply to --kv-policy {name}.")
            fields[key] = value
    if name == "razor":
        if args.kv_heads and args.kv_heads_from is not None:
            raise InputError("Give --kv-heads or --kv-heads-from, not both.")
        heads = parse_kv_heads(args.kv_heads) if args.kv_heads else (
            kv_heads_from(args.kv_heads_from, model, args.kv_top) if args.kv_heads_from is not None else [])
        fields.update(heads=tuple(heads), head_kind="kv", compensation=not args.no_kv_compensation)
    policy = cls(**fields)
    if hasattr(policy, "validate"):
        policy.validate(model)
    return policy


def register(sub) -> None:
    from mechscope.analyses.kv_curve import KVCurveParams

    p = sub.add_parser("kv-curve", help="NIAH accuracy vs KV memory: RazorAttention vs a uniform sinks + window cache",
                       description="For m full-KV retrieval heads (RazorAttention, compensation token) against a "
                                   "head-agnostic sinks + window cache of the same size: NIAH accuracy and the "
                                   "fraction of the KV cache kept.")
    from mechscope.app.commands.common import add_model_out, add_params

    add_model_out(p)
    add_params(p, KVCurveParams, skip=("heads",))
    p.add_argument("--heads-from", type=Path, default=None,
                   help="a saved retrieval-heads or duo-gates result ranking the KV heads (default: detect on the grid)")
    p.set_defaults(func=run_curve)


def run_curve(args) -> int:
    from mechscope.analyses.kv_curve import KVCurveParams, kv_curve
    from mechscope.app.commands.common import check_out_dir, load_model, params_from_args, progress, save_result

    check_out_dir(args.out)
    model = load_model(args)
    ranked = []
    if args.heads_from is not None:
        from mechscope.probes.razor import n_kv_heads

        ranked = kv_heads_from(args.heads_from, model, model.cfg.n_layers * n_kv_heads(model))
    res = kv_curve(model, params_from_args(KVCurveParams, args, heads=tuple(ranked)), progress=progress("NIAH answers"))
    if not res.complete:
        print("interrupted: saving the points finished so far (complete = false)")
    print(res.curve.round(3).to_string(index=False))
    save_result(res, args.out)
    return 0
