"""Circuit-discovery benchmarks: ``python -m benchmarks.bench_circuits``.

Per task (the shipped ``circuit_*`` tasks), ``analyses.circuits.circuit_compare`` runs every method
on the same positive prompt pairs and the same noising-patching ground truth, timing each:

* the **patching sweep** (all heads of a layer + its MLP in one batch-expanded forward from that
  layer's ``resid_pre``) — the ground truth and the baseline the other methods are compared with;
* **attribution patching** (1 forward+backward + 2 forwards) and **EAP-IG** (m forward+backward
  + 2 forwards);
* the **discrete-SAE method** (2 forwards for the head vectors + training the reference's one SAE
  over all heads' d_model outputs; ``--per-head`` adds our per-head-SAE variant as its own rows),
  with the reference's own "edge AUC" (its top head pairs as node predictions, scored against the
  node ground truth) beside its node AUC.

Beside it, the sweep's batching is checked against the naive sweep (one full forward per head,
same prompts) on ``--naive-layers`` layers, both timed in this run.

Edges: every pair among the ``--edge-top-n`` heads with the largest |patching effect| is path
patched (the edge ground truth; ``--edge-inputs``: the receiver inputs, the first one the ground
truth, e.g. ``qkv,q,kv`` to split the query path from the key/value path) and scored by edge
attribution patching, EAP-IG and the discrete-SAE co-occurrence; edge ROC-AUC at the node
thresholds, runtimes and passes, and the batched path patching (all edges of a receiver layer per
forward) timed against one edge per forward on the edges into the two busiest receiver layers.

``--edges`` runs the edge benchmark instead (MIB circuit track, :func:`analyses.circuits.circuit_edges`):
edge attribution (EAP, EAP-IG) of every edge of the residual graph over ``--n-prompts`` pairs —
seconds and peak memory — then the faithfulness curves (seconds, circuits evaluated), CPR and CMD
with bootstrap intervals per method beside the random baseline, and the Jaccard stability of the
top 1% of edges. It prints (or writes ``--out``), never RESULTS.md. GPU: ``python -m
benchmarks.bench_circuits --edges --device cuda --tasks ioi,greater_than,docstring,induction
--n-prompts 64 --n-eval 32 --batch-size 16 --out /tmp/circuits_edges_gpu.md``. Tiny CPU check:
``--edges --tasks ioi --n-prompts 4 --n-eval 4 --batch-size 4 --ig-steps 2 --n-random 1 --quick``.

``--device cuda`` runs on the GPU; ``--out FILE`` writes the markdown there (else, unless
``--quick``, into RESULTS.md's section). GPU: ``python -m benchmarks.bench_circuits --device cuda
--n-prompts 32 --batch-size 32 --edge-top-n 20 --edge-inputs qkv,q,kv --per-head --sae-diagnostics
--out /tmp/circuits_gpu.md``. Tiny CPU check: ``--tasks induction --n-prompts 2 --epochs 20
--edge-top-n 4 --sizes 1,5 --naive-layers 0 --ig-steps 2 --quick``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine_info, markdown_table, write_section
from mechscope.probes.hooknames import head_label

HEADING = "Circuit discovery"


def naive_sweep_seconds(model, pairs, layers, batch_size: int) -> float:
    """One full forward per head (patched z from the corrupted run), over the given layers."""
    from mechscope.probes import attribution as attr

    H = model.cfg.n_heads
    dev = model.cfg.device
    t0 = time.perf_counter()
    with torch.no_grad():
        for idx in attr._chunks(len(pairs), batch_size):
            sub = pairs.subset(idx)
            _, cache = model.run_with_cache(sub.corrupt.to(dev), names_filter=lambda x: x.endswith("hook_z"))
            for l in layers:
                for h in range(H):
                    def hook(z, hook, l=l, h=h):
                        z = z.clone()
                        z[:, :, h] = cache[f"blocks.{l}.attn.hook_z"][:, :, h]
                        return z
                    with model.hooks(fwd_hooks=[(f"blocks.{l}.attn.hook_z", hook)], reset_hooks_end=True):
                        attr.logit_diff(model(sub.clean.to(dev)), sub)
    if dev != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def batched_sweep_seconds(model, pairs, layers, batch_size: int) -> float:
    from mechscope.probes import attribution as attr

    t0 = time.perf_counter()
    attr.patch_nodes(model, pairs, "noising", batch_size, mlp=False, layers=layers)
    if model.cfg.device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def edge_batching_seconds(model, pairs, edges, inputs, batch_size: int) -> tuple[float, float, int]:
    """Path patching of the edges into the two busiest receiver layers: batched (one forward per
    receiver layer and prompt batch) vs one edge per forward; (batched s, one-per-forward s, edges)."""
    from collections import Counter

    from mechscope.probes import path_patching as pp

    busiest = {l for l, _ in Counter(r[0] for _, r in edges).most_common(2)}
    sub = [e for e in edges if e[1][0] in busiest]
    cpu = str(model.cfg.device) == "cpu"
    rows = 128 if cpu else 1024
    out = []
    for max_rows in (rows, batch_size):
        t0 = time.perf_counter()
        pp.path_patch_edges(model, pairs, sub, "noising", inputs, batch_size, max_rows)
        if not cpu:
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out[0], out[1], len(sub)


def sae_diagnostics(model, pairs, res, p) -> tuple[list, list]:
    """Why the discrete-SAE node score misses heads, without tuning on the ground truth: the
    reference (head output averaged over positions) against two variants fixed in
    advance — the head output at the last position (where the metric is read) and a label-free
    baseline (distinct codes per head over all prompts, positive or not: code *diversity*).
    Returns AUC rows and per-missed-head rows."""
    from scipy.stats import spearmanr

    from mechscope.analyses.circuits import CircuitDiscoverParams, roc_auc, sae_codes
    from mechscope.saes import discrete

    L, H = res.truth.shape
    rows, miss = [], []
    div = {}
    for positions in ("mean", "last"):
        sp = CircuitDiscoverParams(task=p.task, n_prompts=p.n_prompts, n_latents=p.n_latents, l1=p.l1, epochs=p.epochs,
                                   shared=p.shared, seed=p.seed, n_train=p.n_train, isometric=p.isometric,
                                   positions=positions)
        cp, cn = sae_codes(model, pairs, sp)
        counts = discrete.unique_positive_counts(cp, cn).reshape(L, H)
        codes = np.concatenate([cp, cn])
        div[positions] = np.array([len(np.unique(codes[:, i])) for i in range(codes.shape[1])]).reshape(L, H)
        rho = spearmanr(counts.ravel(), div[positions].ravel()).statistic
        for name, sc in ((f"discrete SAE, {positions}{' (reference)' if positions == 'mean' else ' position'}", counts),
                         (f"label-free: distinct codes per head ({positions})", div[positions])):
            rows.append([name, p.task, *[f"{roc_auc(sc, np.abs(res.truth) >= t):.3f}" for t in p.thresholds],
                         f"{rho:.2f}" if sc is counts else "", negatives_doing_the_task(model, p.task)
                         if sc is counts and positions == "mean" else ""])
        if positions == "mean":
            ref = counts
    rank = (-ref).ravel().argsort(kind="stable").argsort().reshape(L, H) + 1
    t = p.thresholds[len(p.thresholds) // 2]
    gt = [(l, h) for l in range(L) for h in range(H) if abs(res.truth[l, h]) >= t]
    for l, h in sorted(gt, key=lambda x: -rank[x])[:6]:
        miss.append([p.task, head_label(l, h), f"{res.truth[l, h]:+.2f}", int(rank[l, h]), int(ref[l, h]), int(div["mean"][l, h]),
                     int(div["last"][l, h])])
    return rows, miss


def _progress(task: str):
    """tqdm bars for the patching sweep, then the edges (a new bar when the total changes)."""
    from tqdm.auto import tqdm

    state = {"total": None, "bar": None}

    def cb(done: int, total: int) -> None:
        if total != state["total"]:
            if state["bar"] is not None:
                state["bar"].close()
            state["total"] = total
            state["bar"] = tqdm(total=total, desc=f"{task}: {'patching' if state['bar'] is None else 'edges'}",
                                mininterval=5)
        state["bar"].n = done
        state["bar"].refresh()

    return cb


def negatives_doing_the_task(model, task: str, n: int = 32) -> str:
    """Fraction of corrupted prompts on which the model's top-1 next token is the corrupted
    prompt's *own* answer (docstring: the corrupt def's third argument; induction: the word put in
    the first half, i.e. the record's distractor) — "n/a" where the corruption leaves no answer
    (IOI's ABC names, greater-than's year 01). High = the negatives still carry the behaviour."""
    import re

    from mechscope.analyses.circuits import load_circuit_task, task_pairs
    from mechscope.probes import attribution as attr
    from mechscope.probes.tokens import single_token

    if task not in ("docstring", "induction"):
        return "n/a"
    recs = load_circuit_task(task)[:n]
    pairs = task_pairs(model, recs)
    if task == "docstring":
        own = [" " + re.search(r"\(self, ([^)]*)\)", r["corrupt"])[1].split(", ")[2] for r in recs]
    else:
        own = [r["distractors"][0] for r in recs]
    want = torch.tensor([single_token(model, w) for w in own])
    with torch.no_grad():
        top = attr.last_logits(model, pairs.corrupt.to(model.cfg.device), pairs.lengths).argmax(-1).cpu()
    return f"{(top == want).float().mean().item():.0%} of {len(recs)}"


def _peak_bytes(device: str) -> int:
    if device != "cpu":
        return int(torch.cuda.max_memory_allocated())
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def edge_benchmark(model, args) -> str:
    """The MIB edge benchmark (module doc): attribution cost, faithfulness cost, CPR / CMD."""
    from mechscope.analyses.circuits import EdgeCircuitParams, edge_circuits_on
    from mechscope.analyses.circuits.edges import _split
    from mechscope.probes import edge_attribution as ea

    dev = args.device
    g = ea.EdgeGraph.from_model(model)
    cost_rows, score_rows, checks = [], [], []
    for task in [t for t in args.tasks.split(",") if t]:
        params = EdgeCircuitParams(task=task, n_prompts=args.n_prompts, n_eval=args.n_eval, batch_size=args.batch_size,
                                   ig_steps=args.ig_steps, n_random=args.n_random, methods=tuple(args.methods.split(",")))
        try:
            attr_pairs, eval_pairs, check = _split(model, params)
        except Exception as e:  # a task the model does not do: reported, not scored
            checks.append([task, str(e)])
            continue
        checks.append([task, f"{check['frac_positive']:.0%} of {check['n_pairs']} clean prompts positive; "
                             f"{len(attr_pairs)} attribution + {len(eval_pairs)} evaluation pairs"])
        for steps, name in ((1, "eap"), (args.ig_steps, "eap_ig")):
            if dev != "cpu":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            before = _peak_bytes(dev)
            t0 = time.perf_counter()
            ea.edge_scores(model, attr_pairs, steps=steps, batch_size=args.batch_size)
            if dev != "cpu":
                torch.cuda.synchronize()
            sec = time.perf_counter() - t0
            peak = _peak_bytes(dev)
            mem = f"{peak / 2**20:.0f} MiB (GPU peak)" if dev != "cpu" else f"+{max(0, peak - before) / 2**20:.0f} MiB (RSS peak rise)"
            cost_rows.append([task, name, g.n_edges, len(attr_pairs), f"{sec:.2f}", mem])
        t0 = time.perf_counter()
        res = edge_circuits_on(model, attr_pairs, eval_pairs, params, check)
        total = time.perf_counter() - t0
        s = res.summary
        ev = float(s["eval_seconds"].iloc[0])
        cost_rows.append([task, f"faithfulness curves ({int(s['n_circuits'].iloc[0])} circuits incl. full and empty)",
                          g.n_edges, len(eval_pairs), f"{ev:.2f}", ""])
        cost_rows.append([task, "whole analysis (scores + curves + bootstrap)", g.n_edges, len(attr_pairs) + len(eval_pairs),
                          f"{total:.2f}", ""])
        for r in s.itertuples():
            score_rows.append([task, r.method, f"{r.cpr:.3f} [{r.cpr_lo:.3f}, {r.cpr_hi:.3f}]",
                               f"{r.cmd:.3f} [{r.cmd_lo:.3f}, {r.cmd_hi:.3f}]", f"{r.jaccard:.2f}"])
        print(f"{task}: {total:.1f} s")
    info = machine_info()
    body = [f"Machine: {info.get('cpu', '?')}, {info.get('cores', '?')} cores, device {dev}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s). Model {args.model}: {g.n_forward} upstream × {g.n_backward} downstream "
            f"nodes, {g.n_edges} edges. EAP-IG {args.ig_steps} steps; patching ablation; random baseline averaged over "
            f"{args.n_random} rankings; 95% bootstrap intervals over the evaluation prompts.", "",
            markdown_table(["task", "task check"], checks), "",
            markdown_table(["task", "step", "edges", "prompt pairs", "seconds", "memory"], cost_rows), "",
            "CPR (area under the faithfulness curve over 0.1–100% of edges, signed ranking; higher is better) and CMD "
            "(area of |1 − f|, |score| ranking; lower is better), as the MIB circuit track defines them; Jaccard = mean "
            "pairwise overlap of the top 1% edges over bootstrap resamples of the attribution prompts:", "",
            markdown_table(["task", "method", "CPR [95% CI]", "CMD [95% CI]", "Jaccard"], score_rows)]
    return "\n".join(body)


def main(argv=None) -> int:
    from mechscope.analyses.circuits import ANCHORS, TASKS, CircuitCompareParams, circuit_compare, select_positive, task_pairs, load_circuit_task
    from mechscope.probes.models import load

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--n-prompts", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=500)
    ap.add_argument("--ig-steps", type=int, default=5)
    ap.add_argument("--sizes", default="1,2,5,10,20,40,80")
    ap.add_argument("--naive-layers", default="0,15", help="layers on which the naive sweep is timed")
    ap.add_argument("--per-head", action="store_true",
                    help="also run our per-head-SAE variant (one SAE per head, isometric input) beside the reference's shared SAE")
    ap.add_argument("--quick", action="store_true", help="print only, do not write RESULTS.md")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown here")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--edge-top-n", type=int, default=10, help="path-patch every pair among the top-N heads (0 = no edges)")
    ap.add_argument("--edge-inputs", default="qkv", help="receiver inputs, comma-separated; the first is the ground truth")
    ap.add_argument("--no-edge-batching", action="store_true", help="skip the batched vs one-edge-per-forward timing")
    ap.add_argument("--sae-diagnostics", action="store_true",
                    help="also: SAE node AUC with last-position head outputs and a label-free code-diversity baseline")
    ap.add_argument("--edges", action="store_true", help="run the MIB edge benchmark instead (prints or writes --out only)")
    ap.add_argument("--n-eval", type=int, default=32, help="--edges: evaluation pairs (other than the attribution pairs)")
    ap.add_argument("--n-random", type=int, default=3, help="--edges: random rankings for the baseline")
    ap.add_argument("--methods", default="eap,eap_ig,node_patching,random", help="--edges: methods")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(args.model, device=args.device).model if args.device != "cpu" else load(args.model).model
    if args.edges:
        text = edge_benchmark(model, args)
        print(text)
        if args.out:
            args.out.write_text(f"## Edge circuits (MIB)\n\n{text}\n")
        return 0
    tasks = [t for t in args.tasks.split(",") if t]
    sizes = tuple(int(s) for s in args.sizes.split(","))
    naive_layers = [int(x) for x in args.naive_layers.split(",") if x]

    edge_inputs = tuple(x for x in args.edge_inputs.split(",") if x)
    checks, auc_rows, time_rows, faith_rows, miss_rows = [], [], [], [], []
    edge_auc_rows, edge_time_rows, edge_rows = [], [], []
    diag_rows, diag_miss = [], []
    for task in tasks:
        pairs, check = select_positive(model, task_pairs(model, load_circuit_task(task)), args.n_prompts)
        ok = check["frac_positive"] >= 0.6 and check["mean_ld_clean"] > 0
        checks.append([task, check["n_pairs"], f"{check['frac_positive']:.0%}", f"{check['mean_ld_clean']:.2f}",
                       f"{check['mean_ld_corrupt']:.2f}", "yes" if ok else "NO (reported, not scored)"])
        if not ok:
            continue
        variants = [True, False] if args.per_head else [True]
        for shared in variants:
            p = CircuitCompareParams(task=task, n_prompts=args.n_prompts, batch_size=args.batch_size, ig_steps=args.ig_steps,
                                     epochs=args.epochs, sizes=sizes, shared=shared,
                                     edge_top_n=args.edge_top_n if shared else 0, edge_inputs=edge_inputs)
            t0 = time.perf_counter()
            res = circuit_compare(model, p, progress=_progress(task))
            total = time.perf_counter() - t0
            tab = res.auc_table()
            for m in res.methods:
                if not shared and m != "discrete_sae":
                    continue
                name = m + ("" if shared else " (per-head SAEs, ours)")
                aucs = [f"{tab[(tab.method == m) & (tab.threshold == t)].node_auc.item():.3f}" for t in p.thresholds]
                auc_rows.append([name, task, *aucs, res.n_used])
                if m == "discrete_sae":
                    pair = [f"{tab[(tab.method == m) & (tab.threshold == t)].pair_node_auc.item():.3f}" for t in p.thresholds]
                    auc_rows.append([f"{name}: top head pairs as nodes (the reference's \"edge AUC\")", task, *pair,
                                     res.n_used])
                sec = res.seconds[m]
                pas = res.passes[m]
                time_rows.append([name, task, f"{sec:.2f}", f"{res.seconds['patching'] / sec:.1f}×",
                                  pas.get("forward_prompt_sets", "?"), pas.get("backward_prompt_sets", 0)])
            if shared:
                gts = [int(tab[(tab.method == "patching") & (tab.threshold == t)].gt_size.item()) for t in p.thresholds]
                auc_rows.append(["(ground-truth size)", task, *gts, res.n_used])
                f = res.faithfulness
                for m in res.methods:
                    row = [m, task]
                    for k in sizes:
                        sel = f[(f.method == m) & (f["size"] == k)]
                        row.append(f"{sel[sel['mode'] == 'keep'].recovered.item():.2f} / {sel[sel['mode'] == 'ablate'].recovered.item():.2f}")
                    faith_rows.append(row)
                if res.has_edges:
                    for m in res.methods:
                        edge_auc_rows.append([m, task, *[f"{tab[(tab.method == m) & (tab.threshold == t)].edge_auc.item():.3f}"
                                                         for t in p.thresholds], res.n_used])
                    ge = [int(tab[(tab.method == "patching") & (tab.threshold == t)].gt_edges.item()) for t in p.thresholds]
                    edge_auc_rows.append([f"(ground-truth edges of {len(res.edges)}, top-{args.edge_top_n} heads)", task, *ge,
                                          res.n_used])
                    base = res.seconds["patching_edges"]
                    for m in ("patching", "attribution_patching", "eap_ig"):
                        sec, pas = res.seconds[f"{m}_edges"], res.passes[f"{m}_edges"]
                        edge_time_rows.append(["path patching" if m == "patching" else m, task,
                                               f"{sec:.2f}", f"{base / sec:.1f}×", pas.get("forward_prompt_sets", "?"),
                                               pas.get("backward_prompt_sets", 0)])
                    edge_time_rows.append(["discrete_sae (co-occurrence, from its codes)", task, "≈0", "", "", ""])
                    if not args.no_edge_batching:
                        H = model.cfg.n_heads
                        el = [((int(a) // H, int(a) % H), (int(b) // H, int(b) % H)) for a, b in res.edges]
                        bt, nt, ne = edge_batching_seconds(model, pairs, el, edge_inputs[:1], args.batch_size)
                        edge_time_rows.append([f"path patching of {ne} edges (two busiest receiver layers): batched vs one "
                                               "edge per forward", task, f"{bt:.2f} vs {nt:.2f}", f"{nt / bt:.1f}× (one-per-forward / batched)", "", ""])
                    ef = res.edge_frame()
                    col = f"effect_{edge_inputs[0]}"
                    for r in ef.reindex(ef[col].abs().sort_values(ascending=False).index).head(6).itertuples():
                        eff = " / ".join(f"{getattr(r, f'effect_{g}'):+.3f}" for g in edge_inputs)
                        edge_rows.append([task, f"{r.sender}→{r.receiver}", eff, f"{r.attribution_patching:.3f}",
                                          f"{r.eap_ig:.3f}", f"{r.discrete_sae:.0f}"])
                if args.sae_diagnostics:
                    dr, dm = sae_diagnostics(model, pairs, res, p)
                    diag_rows += dr
                    diag_miss += dm
                miss = res.missed(k=5)
                miss_rows.append([task, ", ".join(f"{r.node} ({r.effect:+.2f}, rank {r.rank})" for r in miss.itertuples())])
                nb = batched_sweep_seconds(model, pairs, naive_layers, args.batch_size)
                nn_ = naive_sweep_seconds(model, pairs, naive_layers, args.batch_size)
                time_rows.append([f"sweep on layers {naive_layers}: batched vs one forward per head", task,
                                  f"{nb:.2f} vs {nn_:.2f}", f"{nn_ / nb:.1f}× faster", "", ""])
            print(f"{task}{'' if shared else ' (per-head SAEs)'}: {total:.1f} s")

    ths = CircuitCompareParams().thresholds
    for a in ANCHORS:
        if a["pair_node_auc"] == a["pair_node_auc"]:  # O'Neill & Bui: node AUC and top-pairs-as-nodes AUC
            auc_rows.append([f"{a['method']}, {a['model']} — theirs", a["task"],
                             *([f"{a['node_auc']:.3f}"] + [""] * (len(ths) - 1)),
                             f"top pairs as nodes (their \"edge AUC\") {a['pair_node_auc']:.3f}"])
        if a["edge_auc"] == a["edge_auc"]:  # ACDC: over the published circuit's edges
            edge_auc_rows.append([f"{a['method']}, {a['model']} — theirs", a["task"],
                                  *([f"{a['edge_auc']:.3f}"] + [""] * (len(ths) - 1)), "published circuit"])
    info = machine_info()
    body = [f"Machine: {info.get('cpu', '?')}, {info.get('cores', '?')} cores, device {args.device}, torch "
            f"{torch.__version__}, {torch.get_num_threads()} thread(s). Model {args.model}; {args.n_prompts} positive "
            f"prompt pairs per task; discrete SAE: one SAE over all heads' d_model outputs (the reference), "
            f"{args.epochs} epochs, 200 latents, L1 0.02, trained on 10 of the prompts; EAP-IG {args.ig_steps} steps (gradients at "
            f"corrupted + k/m·(clean − corrupted), k = 0..m−1); edges among the top-{args.edge_top_n} heads.",
            "", "Task check (the prompt pairs evaluated to find the positive ones):", "",
            markdown_table(["task", "pairs", "clean positive", "mean LD clean", "mean LD corrupted", "does the task"], checks),
            "", "Node ROC-AUC against the noising-patching ground truth (|effect| ≥ threshold). \"Top head pairs as "
                "nodes\": the discrete SAE's head pairs ranked by co-occurrence count, the heads of the top n²/2 pair "
                "entries counted and scored against the node ground truth — what O'Neill & Bui report as \"edge AUC\". "
                "\"theirs\" rows: the papers' own numbers on their models (IOI, greater-than: GPT-2 small; docstring: "
                "attn-only-4l) against published circuits (not comparable ground truth):", "",
            markdown_table(["method", "task", *[f"AUC @ {t:g}" for t in ths], "prompts"], auc_rows),
            "", "Runtime (seconds; ratio = patching sweep time / method time, same run); passes in units of one "
                "forward over the prompt set (patching: per layer, from that layer on):", "",
            markdown_table(["method", "task", "seconds", "patching / method", "forward passes", "backward passes"], time_rows),
            "", "Faithfulness: logit difference as a fraction of the clean one, keep-only-top-k / ablate-top-k "
                "(mean ablation over corrupted prompts and positions):", "",
            markdown_table(["method", "task", *[f"k={k}" for k in sizes]], faith_rows),
            "", f"Ground-truth heads (|effect| ≥ 0.02) the discrete-SAE method ranks lowest (effect, rank of "
                f"{model.cfg.n_layers * model.cfg.n_heads}):", "",
            markdown_table(["task", "missed heads"], miss_rows)]
    if edge_auc_rows and args.edge_top_n:
        body += ["", f"Edge ROC-AUC against path patching (|edge effect| ≥ threshold, the node thresholds; edges = every "
                     f"ordered pair of the top-{args.edge_top_n} heads by |node effect| with the receiver in a later layer; "
                     f"receiver = a query head patched through its own {edge_inputs[0]} inputs, K/V ungrouped). \"theirs\" "
                     "rows: ACDC's edge AUCs against published circuits on its models (IOI, greater-than: GPT-2 small; "
                     "docstring: attn-only-4l; not comparable). O'Neill & Bui's \"edge AUC\" is a node AUC (in the node "
                     "table):", "",
                 markdown_table(["method", "task", *[f"edge AUC @ {t:g}" for t in ths], "prompts"], edge_auc_rows),
                 "", "Edge runtime (seconds; ratio = path-patching time / method time, same run); passes in forward "
                     "prompt-sets (path patching: one per edge × input group, each from the receiver's layer on):", "",
                 markdown_table(["method", "task", "seconds", "path patching / method", "forward passes", "backward passes"],
                                edge_time_rows),
                 "", f"Strongest edges (path patching, fraction of the gap, receiver inputs {' / '.join(edge_inputs)}), with "
                     "the methods' scores (|AtP|, |EAP-IG| as fractions of the gap; SAE co-occurring code pairs):", "",
                 markdown_table(["task", "edge", f"effect {' / '.join(edge_inputs)}", "AtP", "EAP-IG", "SAE"], edge_rows)]
    if diag_rows:
        body += ["", "Discrete-SAE diagnostics (node AUC; variants fixed in advance, not tuned on the ground truth): the "
                     "reference input (head output averaged over positions), the head output at the last position, and "
                     "a label-free baseline = number of distinct codes a head takes over all prompts. ρ = Spearman "
                     "correlation of the SAE score with that diversity. Last column: how often the model's top-1 on a "
                     "corrupted prompt is that prompt's own answer (the negatives still doing the task):", "",
                 markdown_table(["variant", "task", *[f"AUC @ {t:g}" for t in ths], "ρ(score, diversity)",
                                 "corrupted prompts answered with their own answer"], diag_rows),
                 "", "Ground-truth heads the reference ranks lowest, with their positive-only codes and distinct codes "
                     "(mean / last position):", "",
                 markdown_table(["task", "head", "effect", "rank", "positive-only codes", "distinct (mean)",
                                 "distinct (last)"], diag_miss)]
    text = "\n".join(body)
    print(text)
    if args.out:
        args.out.write_text(f"## {HEADING}\n\n{text}\n")
    elif not args.quick:
        write_section(HEADING, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
