"""``mechscope duo-gates``: train DuoAttention gates (Xiao et al. 2024) on
synthetic passkey retrieval and compare the retrieval/streaming split with Wu et al.'s
retrieval heads. Ctrl-C stops training and saves the gates reached so far
(``complete: false``)."""

from __future__ import annotations

from pathlib import Path

from mechscope.app.commands.common import add_model_out, add_params, check_out_dir, load_model, params_from_args, progress, save_result
from mechscope.app.specs import format_head, parse_heads
from mechscope.probes.errors import InputError


def register(sub) -> None:
    from mechscope.analyses.duo_attention import DuoParams

    p = sub.add_parser("duo-gates", help="train DuoAttention gates (one per KV head) on synthetic passkey retrieval",
                       description="DuoAttention: each KV head mixes full and sinks+window attention through a gate "
                                   "α in [0, 1] (init 1); only the gates are trained, loss = MSE of the final hidden "
                                   "states on the answer tail + λ·mean|α|. Heads with α ≥ 0.5 are retrieval heads.")
    add_model_out(p)
    add_params(p, DuoParams, skip=("retrieval_heads",))
    p.add_argument("--heads-from", type=Path, default=None,
                   help="a saved retrieval-heads result: its heads above its threshold for the overlap (and Spearman)")
    p.add_argument("--retrieval-heads", default="", metavar="L17H3,L18H6,...",
                   help="retrieval query heads for the overlap (instead of --heads-from)")
    p.set_defaults(func=run)


def _retrieval_from(path: Path):
    from mechscope.analyses.catalog import load_result
    from mechscope.analyses.retrieval import RetrievalResult

    res = load_result(path)
    if not isinstance(res, RetrievalResult):
        raise InputError(f"{path} holds a {res.kind} result, not retrieval-heads.")
    return res


def run(args) -> int:
    from mechscope.analyses.duo_attention import DuoParams, duo_gates, gate_score_spearman

    check_out_dir(args.out)
    if args.heads_from is not None and args.retrieval_heads:
        raise InputError("Give --heads-from or --retrieval-heads, not both.")
    det = _retrieval_from(args.heads_from) if args.heads_from is not None else None
    heads = det.retrieval_heads() if det is not None else parse_heads(args.retrieval_heads)
    params = params_from_args(DuoParams, args, retrieval_heads=tuple(heads))
    res = duo_gates(load_model(args), params, progress=progress("gate training"))
    if not res.complete:
        print(f"interrupted after {len(res.log)} steps: saving the gates reached so far (complete = false)")
    s = res.summary()
    print(f"{s['retrieval']} of {s['kv_heads']} KV heads have α ≥ {params.threshold:g} (retrieval); mean α "
          f"{s['mean_gate']:.3f}; final distillation MSE {s['final_distill']:.3g} after {s['steps']} steps")
    print("highest gates: " + ", ".join(f"L{l}K{k} {res.gates[l, k]:.2f}" for l, k in
                                        sorted(((l, k) for l in range(res.gates.shape[0]) for k in range(res.gates.shape[1])),
                                               key=lambda x: -res.gates[x])[:10]))
    if heads:
        o = res.overlap()
        print(f"overlap with {len(heads)} retrieval query heads ({', '.join(format_head(l, h) for l, h in heads[:12])}) "
              f"= {o['n_retrieval']} KV heads: {o['both']} shared, Jaccard {o['jaccard']:.2f}, "
              f"precision {o['precision']:.2f}, recall {o['recall']:.2f}")
    if det is not None:
        print(f"Spearman(gates, KV-grouped max retrieval score) = {gate_score_spearman(res.gates, det.head_scores, res.group):.3f}")
    save_result(res, args.out)
    return 0
