"""Benchmark for decoding strategies on knowledge conflicts: ``python -m benchmarks.bench_decoding``.

Accuracy of greedy decoding, DeCoRe (Gema et al. 2024), context-aware decoding (CAD, Shi et al.
2023), contrastive decoding (CD, Li et al. 2022) and DoLa (Chuang et al. 2023) on the
knowledge-conflict set (``data/tasks/knowledge_conflict.jsonl``, 110 items) and the
contextual-faithfulness set (``data/tasks/faithfulness.jsonl``, 42 items): the context
contradicts what the model memorised, and the question's answer is the context's.

Protocol: plain-text prompt, the context c = ``"{context}\\n"`` followed by the query
x = ``"{instruction}\\nQuestion: {question}\\nAnswer:"``; every strategy reads the same tokens
(BOS, c, x) — CAD reads x with and without c. Up to ``--max-new-tokens`` (k = 12) tokens,
stopping at a newline or EOS; an answer is **correct** when the first line of the first k
tokens contains the context's answer (case-insensitive, word-bounded); the table also gives
the rate at which it names the memorised answer. 95% percentile bootstrap CIs over items
(``probes.stats.bootstrap_ci``), paired for the difference from greedy. Cost: wall time per
generated token relative to greedy's, on the same items (strategies interleaved per item).

Defaults: CAD α = 0.5; CD β = 0.1 with the early-exit amateur at layer N // 2 (``--cd-amateur
layer:L``, ``heads:L:H,...`` or ``model:NAME`` with the same tokenizer); DoLa ``"high"`` layers,
relative top 0.1, repetition penalty 1.2 (HF's recommendation); DeCoRe entropy-guided α with
``--decore-heads`` (else the top 10 heads detected on a small NIAH grid, ``--detect-lengths``).

GPU (H100/H200)::

    PYTHONUNBUFFERED=1 python -m benchmarks.bench_decoding --device cuda --out gpu_decoding.md

DoLa against Hugging Face's model (``--check-dola-hf N``): the GGUF de-quantised by transformers
is decoded with HF's ``_dola_decoding`` steps written out over HF's own forward
(``output_hidden_states``, ``lm_head`` on ``hidden_states[l]``, ``RepetitionPenaltyLogitsProcessor``)
and compared token by token with ``DoLa()`` on the converted model, on N knowledge-conflict
prompts (transformers ≥ 5 serves ``generate(dola_layers=...)`` from the Hub, unreachable
offline)::

    python -m benchmarks.bench_decoding --check-dola-hf 5

Cost per generated token only (``--cost-only N``: one short prompt, N new tokens, median of
``--repeats`` rounds)::

    python -m benchmarks.bench_decoding --device cuda --cost-only 64 --cd-amateur heads:18:6,17:3,23:2 \
        --decore-heads 18:6,17:3,23:2,17:4,18:7,23:7,21:8,24:4,21:5,17:5

CPU (a few minutes)::

    python -m benchmarks.bench_decoding --items 30 --decore-heads 18:6,17:3,23:2,17:4,18:7,23:7,21:8,24:4,21:5,17:5
"""

from __future__ import annotations

import argparse
import re
import time

import numpy as np
import torch

from benchmarks.common import add_output_flags, machine_info, markdown_table, publish

HEADING = "Decoding strategies on knowledge conflicts"
INSTRUCTION = "Answer the question using only the text above, in a few words."


def _has(text: str, phrase: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(phrase.lower()) + r"(?!\w)", text.lower()) is not None


def first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0] if text.strip() else ""


def query_text(item: dict) -> str:
    return f"{INSTRUCTION}\nQuestion: {item['question']}\nAnswer:"


def parse_amateur(spec: str, n_layers: int) -> dict:
    """``layer:L`` / ``heads:L:H,L:H`` / ``model:NAME`` → ContrastiveDecoding fields."""
    from mechscope.probes.errors import InputError

    kind, _, rest = spec.partition(":")
    if kind == "layer":
        return {"amateur_layer": int(rest) if rest else n_layers // 2}
    if kind == "heads":
        return {"amateur_heads": tuple(tuple(int(x) for x in h.split(":")) for h in rest.split(",") if h)}
    if kind == "model":
        return {"amateur_model": rest}
    raise InputError(f"--cd-amateur must be layer:L, heads:L:H,... or model:NAME, not {spec!r}.")


def evaluate(model, strategies: dict, items: list[dict], max_new_tokens: int, progress=None, show=False):
    """{label: (correct [n], memorised [n])} and {label: (seconds, generated tokens)}."""
    from mechscope.probes.cad import CAD
    from mechscope.probes.decoding import generate
    from mechscope.probes.niah import newline_ids, response_text
    from mechscope.probes.tokens import encode

    stops = newline_ids(model)
    correct = {k: np.zeros(len(items)) for k in strategies}
    memorised = {k: np.zeros(len(items)) for k in strategies}
    cost = {k: [0.0, 0] for k in strategies}
    for i, item in enumerate(items):
        query = [int(t) for t in encode(model, query_text(item)).tolist()]
        context = f"{item['context']}\n"
        full = CAD(context=context).with_context(model, query)
        for label, strat in strategies.items():
            if isinstance(strat, CAD):
                strat, prompt = CAD(context=context, alpha=strat.alpha), query
            else:
                prompt = full
            t0 = time.perf_counter()
            gen = generate(model, prompt, max_new_tokens=max_new_tokens, strategy=strat, stop_tokens=stops)
            if model.cfg.device is not None and str(model.cfg.device).startswith("cuda"):
                torch.cuda.synchronize()
            cost[label][0] += time.perf_counter() - t0
            cost[label][1] += len(gen.new_tokens)
            answer = first_line(response_text(model, gen.new_tokens))
            correct[label][i] = float(_has(answer, item["answer"]))
            memorised[label][i] = float(_has(answer, item["prior"]))
            if show:
                print(f"  {label}: {answer!r} (context: {item['answer']}, memorised: {item['prior']})", flush=True)
        if progress is not None:
            progress(i + 1, len(items))
    return {k: (correct[k], memorised[k]) for k in strategies}, cost


def run(args) -> str:
    from mechscope.probes.cad import CAD
    from mechscope.probes.contrastive_decoding import ContrastiveDecoding
    from mechscope.probes.datasets import load_task
    from mechscope.probes.decore import DeCoRe
    from mechscope.probes.dola import DoLa
    from mechscope.probes.models import load
    from mechscope.probes.stats import bootstrap_ci

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    model = load(args.model, device=args.device).model
    if args.decore_heads:
        heads = [tuple(int(x) for x in h.split(":")) for h in args.decore_heads.split(",") if h]
        source = "given"
    else:
        from mechscope.analyses.retrieval import RetrievalParams, retrieval_heads

        det = retrieval_heads(model, RetrievalParams(lengths=tuple(args.detect_lengths), proxy_seqs=0))
        heads = det.top(10)
        source = f"top 10 detected on lengths {', '.join(map(str, args.detect_lengths))}"
    amateur = parse_amateur(args.cd_amateur, model.cfg.n_layers)
    am_label = (f"early exit at layer {amateur['amateur_layer']}" if "amateur_layer" in amateur
                else f"{len(amateur['amateur_heads'])} heads masked" if "amateur_heads" in amateur
                else f"model {amateur['amateur_model']}")
    strategies = {
        "greedy": "greedy",
        f"DeCoRe (entropy α, {len(heads)} heads)": DeCoRe(tuple(heads)),
        f"CAD (α = {args.cad_alpha:g})": CAD(context="-", alpha=args.cad_alpha),  # context set per item
        f"CD (β = {args.cd_beta:g}, {am_label})": ContrastiveDecoding(beta=args.cd_beta, **amateur),
        f"DoLa ({args.dola_layers}, rep. penalty {args.dola_penalty:g})":
            DoLa(layers=args.dola_layers, repetition_penalty=args.dola_penalty),
    }
    if args.dola_norm_variant:
        strategies[f"DoLa ({args.dola_layers}, final norm on early layers)"] = DoLa(
            layers=args.dola_layers, repetition_penalty=args.dola_penalty, premature_norm=True)
    if args.only:
        keep = [k.lower() for k in args.only]
        strategies = {k: v for k, v in strategies.items()
                      if k == "greedy" or any(k.lower().startswith(p) for p in keep)}
    sections = []
    greedy_cost = {}
    all_cost = {k: [0.0, 0] for k in strategies}
    t_start = time.perf_counter()
    for name in args.sets:
        items = load_task(name)
        items = items[: args.items] if args.items else items
        res, cost = evaluate(model, strategies, items, args.max_new_tokens,
                             progress=(lambda d, t: print(f"{name} {d}/{t}", flush=True)) if args.verbose else None,
                             show=args.verbose)
        for k, (s, n) in cost.items():
            all_cost[k][0] += s
            all_cost[k][1] += n
        g_s, g_n = cost["greedy"]
        greedy_cost[name] = g_s / max(g_n, 1)
        rows = []
        for label, (ok, mem) in res.items():
            m, lo, hi = bootstrap_ci(ok)
            if label == "greedy":
                diff = ""
            else:
                d, dlo, dhi = bootstrap_ci(ok - res["greedy"][0])
                diff = f"{d:+.3f} [{dlo:+.3f}, {dhi:+.3f}]"
            s, n = cost[label]
            ratio = (s / max(n, 1)) / (g_s / max(g_n, 1))
            rows.append([label, f"{m:.3f}", f"[{lo:.3f}, {hi:.3f}]", diff, f"{mem.mean():.3f}", f"{ratio:.2f}×"])
        sections.append(f"**{name}** ({len(items)} items; greedy {1e3 * greedy_cost[name]:.1f} ms per token)\n\n"
                        + markdown_table(["decoding", "accuracy", "95% CI", "vs greedy (paired 95% CI)",
                                          "names memorised answer", "cost per token vs greedy"], rows))
    wall = time.perf_counter() - t_start
    info = machine_info()
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else info.get("cpu")
    return (f"Machine: {device}, {info.get('cores')} cores, torch threads {torch.get_num_threads()}, device "
            f"{args.device}; model {args.model}. Plain prompt: context line, then instruction, question, "
            f"'Answer:'; up to {args.max_new_tokens} new tokens, stopping at a newline; correct = the first line "
            f"contains the context's answer (word-bounded). DeCoRe heads ({source}): "
            f"{', '.join(f'L{l}H{h}' for l, h in heads)}. {wall:.0f} s.\n\n" + "\n\n".join(sections) + "\n")


COST_CONTEXT = "The Eiffel Tower stands in Rome, beside the Colosseum.\n"
COST_QUESTION = "Where does the Eiffel Tower stand?"


def cost_only(args) -> str:
    """Wall time per generated token of greedy, CAD, CD (its amateur from ``--cd-amateur``)
    and, with ``--decore-heads``, DeCoRe on one short prompt: ``--cost-only`` new tokens
    (no early stop), the strategies interleaved, ``--repeats`` rounds after a warm-up; the
    median of the rounds and the median of the per-round ratios to greedy."""
    from mechscope.probes.cad import CAD
    from mechscope.probes.contrastive_decoding import ContrastiveDecoding
    from mechscope.probes.decoding import generate
    from mechscope.probes.decore import DeCoRe
    from mechscope.probes.models import load
    from mechscope.probes.tokens import encode

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    model = load(args.model, device=args.device).model
    query = [int(t) for t in encode(model, query_text({"question": COST_QUESTION})).tolist()]
    amateur = parse_amateur(args.cd_amateur, model.cfg.n_layers)
    strategies = {
        "greedy": ("greedy", CAD(context=COST_CONTEXT).with_context(model, query)),
        f"CAD (α = {args.cad_alpha:g})": (CAD(context=COST_CONTEXT, alpha=args.cad_alpha), query),
        f"CD (β = {args.cd_beta:g}, {args.cd_amateur})": (ContrastiveDecoding(beta=args.cd_beta, **amateur), query),
    }
    if args.decore_heads:
        heads = tuple(tuple(int(x) for x in h.split(":")) for h in args.decore_heads.split(",") if h)
        strategies[f"DeCoRe ({len(heads)} heads)"] = (DeCoRe(heads), query)
    cuda = str(args.device).startswith("cuda")
    per_token = {k: [] for k in strategies}
    for round_ in range(args.repeats + 1):  # round 0 warms up
        for label, (strat, prompt) in strategies.items():
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            gen = generate(model, prompt, max_new_tokens=args.cost_only, strategy=strat, stop_at_eos=False)
            if cuda:
                torch.cuda.synchronize()
            if round_:
                per_token[label].append((time.perf_counter() - t0) / max(len(gen.new_tokens), 1))
    greedy = np.array(per_token["greedy"])
    rows = [[label, f"{1e3 * np.median(t):.2f}", f"{np.median(np.array(t) / greedy):.2f}×",
             ", ".join(f"{x:.2f}" for x in np.array(t) / greedy)] for label, t in per_token.items()]
    info = machine_info()
    device = torch.cuda.get_device_name() if cuda else info.get("cpu")
    return (f"Machine: {device}, {info.get('cores')} cores, torch threads {torch.get_num_threads()}, device "
            f"{args.device}; model {args.model}. One short prompt (query {len(query)} tokens; CAD's context "
            f"{len(CAD(context=COST_CONTEXT).context_ids(model))} more), {args.cost_only} new tokens without "
            f"early stop, prefill included; median of {args.repeats} rounds.\n\n"
            + markdown_table(["decoding", "ms per token", "cost per token vs greedy", "per round"], rows) + "\n")


def check_dola_hf(args) -> str:
    """Our DoLa on the converted SmolLM2 vs HF's DoLa steps on the HF model (same GGUF)."""
    import torch.nn.functional as F
    from transformers import RepetitionPenaltyLogitsProcessor

    from mechscope.probes.convert import hf_from_gguf
    from mechscope.probes.datasets import load_task
    from mechscope.probes.decoding import generate
    from mechscope.probes.dola import DoLa
    from mechscope.probes.models import load
    from mechscope.probes.smollm2 import smollm2_gguf_path
    from mechscope.probes.tokens import encode

    model = load("smollm2-135m", device="cpu").model
    hf, _ = hf_from_gguf(smollm2_gguf_path())
    hf.eval()
    n = hf.config.num_hidden_layers
    tied = bool(hf.config.tie_word_embeddings)
    start = 0 if not tied else (2 if n > 2 else 1 if n == 2 else 0)
    layers = list(range(n // 2, n, 2)) if n <= 40 else list(range(n - 20, n, 2))  # dola_layers="high"
    low = [start] if start == n // 2 else (list(range(start, n // 2, 2)) if n <= 40 else list(range(start, 20, 2)))
    buckets_ok = DoLa("high").candidates(model) == layers and DoLa("low").candidates(model) == low
    penalty = RepetitionPenaltyLogitsProcessor(1.2)
    same, rows = 0, []
    items = load_task("knowledge_conflict")[: args.check_dola_hf]
    for item in items:
        ids = [int(t) for t in encode(model, f"{item['context']}\n{query_text(item)}").tolist()]
        ours = list(generate(model, ids, args.max_new_tokens, DoLa(), stop_at_eos=False).new_tokens)
        seq = torch.tensor([ids])
        theirs = []
        with torch.no_grad():
            for _ in range(args.max_new_tokens):
                out = hf(seq, output_hidden_states=True)
                final = out.logits[:, -1].float()
                prem = torch.stack([hf.lm_head(out.hidden_states[l][:, -1]).float() for l in layers])
                m = 0.5 * (final.softmax(-1)[None] + prem.softmax(-1))
                js = 0.5 * (F.kl_div(final.log_softmax(-1)[None].expand_as(m), m, reduction="none").mean(-1)
                            + F.kl_div(prem.log_softmax(-1), m, reduction="none").mean(-1)).mean(-1)
                base = prem[int(js.argmax())]
                f, b = final.log_softmax(-1), base.log_softmax(-1)
                drop = f < f.max(-1, keepdim=True).values + np.log(0.1)
                scores = penalty(seq, f.masked_fill(drop, float("-inf")) - b.masked_fill(drop, -1e-3))
                tok = int(scores.argmax(-1))
                theirs.append(tok)
                seq = torch.cat([seq, torch.tensor([[tok]])], 1)
        same += ours == theirs
        rows.append([item["question"], repr(model.tokenizer.decode(ours)), repr(model.tokenizer.decode(theirs)),
                     "yes" if ours == theirs else "no"])
    return (f"DoLa (high, relative top 0.1, repetition penalty 1.2) on smollm2-135m vs HF's steps on the HF model "
            f"(candidate layers {layers}, start {start}, tied {tied}; our high/low buckets "
            f"{'equal' if buckets_ok else 'DIFFER from'} HF's): {same}/{len(items)} identical "
            f"{args.max_new_tokens}-token continuations.\n\n"
            + markdown_table(["question", "ours", "HF", "same"], rows) + "\n")


def _list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sets", type=_list, default=["knowledge_conflict", "faithfulness"])
    ap.add_argument("--items", type=int, default=0, help="use only the first N items of each set (0: all)")
    ap.add_argument("--max-new-tokens", type=int, default=12, help="k: answers are the first k tokens' first line")
    ap.add_argument("--decore-heads", default="", help="DeCoRe's masked heads L:H,... (default: detect the top 10)")
    ap.add_argument("--detect-lengths", type=lambda s: [int(x) for x in _list(s)], default=[1000, 2000])
    ap.add_argument("--cad-alpha", type=float, default=0.5)
    ap.add_argument("--cd-beta", type=float, default=0.1)
    ap.add_argument("--cd-amateur", default="layer:", help="layer:L (default N // 2), heads:L:H,... or model:NAME")
    ap.add_argument("--dola-layers", default="high", help="high, low")
    ap.add_argument("--dola-penalty", type=float, default=1.2)
    ap.add_argument("--dola-norm-variant", action="store_true",
                    help="also DoLa with the final norm on the premature layers (not HF's protocol)")
    ap.add_argument("--check-dola-hf", type=int, default=0, metavar="N",
                    help="instead: compare DoLa with HF's steps on the HF model on N prompts")
    ap.add_argument("--only", type=_list, default=[],
                    help="run greedy and the strategies whose label starts with one of these (decore,cad,cd,dola)")
    ap.add_argument("--cost-only", type=int, default=0, metavar="N",
                    help="instead: time per token of greedy, CAD, CD (and DeCoRe with --decore-heads) "
                         "generating N tokens after one short prompt")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of --cost-only (median reported)")
    add_output_flags(ap)
    args = ap.parse_args(argv)
    if args.cost_only:
        publish("Decoding cost per token", cost_only(args), args.out, False)
        return 0
    if args.check_dola_hf:
        publish("DoLa vs Hugging Face", check_dola_hf(args), args.out, False)
        return 0
    publish(HEADING, run(args), args.out, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
