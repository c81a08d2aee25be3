"""``mechscope circuits patch|discover|compare|edges|faithfulness|export``: circuit discovery on the shipped tasks.

* ``patch``    — activation patching of every head and MLP layer (the ground truth);
* ``discover`` — the discrete-SAE method (O'Neill & Bui 2024; by default the reference's one SAE
  over all heads' outputs, ``--no-shared``: our per-head SAEs);
* ``compare``  — patching, attribution patching, EAP-IG and the discrete-SAE method on one task:
  node ROC-AUC at several ground-truth thresholds, edge ROC-AUC against path patching of the pairs
  among the top-N heads (``--edge-top-n``), runtimes, faithfulness curves;
* ``edges``    — edge circuits of the whole residual graph scored as the MIB circuit track scores
  them (EAP, EAP-IG, node-patching-derived, random): faithfulness curves, CPR and CMD with
  bootstrap intervals, Jaccard stability;
* ``faithfulness`` — the same curves for a MIB circuit file's edge scores (``--circuit-file``),
  beside the random baseline;
* ``export``   — one method's top-x% circuit from a saved ``edges`` result, as a MIB circuit file.

Flags and defaults come from each analysis' Params."""

from __future__ import annotations

from pathlib import Path

from mechscope.app.commands.common import add_model_out, add_params, check_out_dir, load_model, params_from_args, progress, save_result


def register(sub) -> None:
    from mechscope.analyses.circuits import CircuitCompareParams, CircuitDiscoverParams, CircuitPatchParams

    p = sub.add_parser("circuits", help="circuit discovery: patching ground truth, attribution, discrete SAEs",
                       description="Circuit discovery on the shipped clean/corrupted tasks (ioi, greater_than, "
                                   "docstring, induction).")
    inner = p.add_subparsers(dest="circuits_command", metavar="ACTION")
    a = inner.add_parser("patch", help="activation patching of every head and MLP (ground truth)")
    add_model_out(a, out_required=False)
    add_params(a, CircuitPatchParams)
    a.set_defaults(func=run_patch)
    b = inner.add_parser("discover", help="the discrete-SAE method (one SAE over all heads' outputs, argmax codes)")
    add_model_out(b, out_required=False)
    add_params(b, CircuitDiscoverParams)
    b.set_defaults(func=run_discover)
    c = inner.add_parser("compare", help="every method vs the patching ground truth: node AUC, runtime, faithfulness")
    add_model_out(c, out_required=False)
    add_params(c, CircuitCompareParams)
    c.set_defaults(func=run_compare)
    from mechscope.analyses.circuits import EdgeCircuitParams

    e = inner.add_parser("edges", help="edge circuits of every method, scored as MIB does (CPR, CMD, random baseline)")
    add_model_out(e, out_required=False)
    add_params(e, EdgeCircuitParams)
    e.set_defaults(func=run_edges)
    f = inner.add_parser("faithfulness", help="faithfulness curve, CPR and CMD of a MIB circuit file's edge scores")
    add_model_out(f, out_required=False)
    add_params(f, EdgeCircuitParams, skip=("methods",))
    f.set_defaults(func=run_faithfulness)
    x = inner.add_parser("export", help="export a method's top-x%% edge circuit of a saved 'edges' result as a MIB file")
    x.add_argument("result", type=Path, help="directory of a saved 'circuits edges' result")
    x.add_argument("--method", default="eap_ig", help="method whose scores rank the edges (default eap_ig)")
    x.add_argument("--percent", type=float, default=1.0, help="circuit size, percent of all edges, in (0, 100] (default 1)")
    x.add_argument("--signed", action="store_true", help="rank by signed score (MIB's CPR ranking) instead of |score|")
    x.add_argument("--file", type=Path, required=True, help="output file: .json or .pt (MIB's formats)")
    x.set_defaults(func=run_export)

    def _help(args) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=_help)


def _phases():
    """Progress for a run in phases (node sweep, then edges): a new bar whenever the total changes."""
    state = {"total": None, "cb": None, "phase": 0}

    def cb(done: int, total: int) -> None:
        if total != state["total"]:
            state["phase"] += 1
            state["total"] = total
            state["cb"] = progress("patching" if state["phase"] == 1 else "path patching (edges)")
        state["cb"](done, total)

    return cb


def _check(check: dict) -> str:
    return (f"task check: {check['frac_positive']:.0%} of {check['n_pairs']} clean prompts positive, mean logit diff "
            f"clean {check['mean_ld_clean']:.2f} / corrupted {check['mean_ld_corrupt']:.2f}")


def run_patch(args) -> int:
    from mechscope.analyses.circuits import CircuitPatchParams, circuit_patch

    check_out_dir(args.out)
    params = params_from_args(CircuitPatchParams, args)
    res = circuit_patch(load_model(args), params, progress=progress("patching"))
    print(_check(res.check))
    df = res.to_frame()
    for d in res.directions:
        top = df[df.direction == d].assign(mag=lambda x: x.effect.abs()).nlargest(10, "mag")
        print(f"top nodes ({d}, fraction of the gap):")
        print(top[["node", "effect"]].round(3).to_string(index=False))
    print(f"{res.seconds:.1f} s, {res.n_used} prompt pairs")
    save_result(res, args.out)
    return 0


def run_discover(args) -> int:
    from mechscope.analyses.circuits import CircuitDiscoverParams, circuit_discover

    check_out_dir(args.out)
    params = params_from_args(CircuitDiscoverParams, args)
    res = circuit_discover(load_model(args), params)
    print(_check(res.check))
    print(res.to_frame().nlargest(15, "positive_only_codes")[["node", "positive_only_codes", "score", "top_codes"]]
          .to_string(index=False))
    print(f"{res.seconds:.1f} s, {res.n_used} prompt pairs")
    save_result(res, args.out)
    return 0


def run_compare(args) -> int:
    from mechscope.analyses.circuits import CircuitCompareParams, circuit_compare

    check_out_dir(args.out)
    params = params_from_args(CircuitCompareParams, args)
    res = circuit_compare(load_model(args), params, progress=_phases())
    print(_check(res.check))
    print(res.auc_table(anchors=True).round(3).to_string(index=False))
    if res.has_edges:
        print("strongest edges (path patching, fraction of the gap):")
        ef = res.edge_frame()
        col = f"effect_{params.edge_inputs[0]}"
        print(ef.reindex(ef[col].abs().sort_values(ascending=False).index).head(10).round(4).to_string(index=False))
    print(res.timing_table().round(2).to_string(index=False))
    print("discrete SAE: ground-truth heads it ranks lowest:")
    print(res.missed().to_string(index=False))
    save_result(res, args.out)
    return 0


def _edge_report(res) -> None:
    if res.check:
        print(_check(res.check))
    print(f"{res.n_attr} attribution pairs, {res.n_evaluated} evaluation pairs; m(N) = {res.m_full:.3f}, m(∅) = {res.m_empty:.3f}")
    cols = ["method", "cpr", "cpr_lo", "cpr_hi", "cmd", "cmd_lo", "cmd_hi", "jaccard", "seconds"]
    print(res.summary[cols].round(3).to_string(index=False))


def run_edges(args) -> int:
    from mechscope.analyses.circuits import EdgeCircuitParams, circuit_edges

    check_out_dir(args.out)
    params = params_from_args(EdgeCircuitParams, args)
    res = circuit_edges(load_model(args), params, progress=progress("circuits (forwards × prompts)"))
    _edge_report(res)
    save_result(res, args.out)
    return 0


def run_faithfulness(args) -> int:
    from mechscope.analyses.circuits import EdgeCircuitParams, circuit_edges
    from mechscope.probes.errors import InputError

    check_out_dir(args.out)
    params = params_from_args(EdgeCircuitParams, args, methods=("random",))
    if not params.circuit_file:
        raise InputError("circuits faithfulness needs --circuit-file (a MIB .json or .pt circuit file).")
    res = circuit_edges(load_model(args), params, progress=progress("circuits (forwards × prompts)"))
    _edge_report(res)
    save_result(res, args.out)
    return 0


def run_export(args) -> int:
    from mechscope.analyses.circuits import EdgeCircuitResult, export_circuit
    from mechscope.probes.errors import InputError
    from mechscope.probes.results import Result

    res = Result.load(args.result)
    if not isinstance(res, EdgeCircuitResult):
        raise InputError(f"{args.result} holds a {res.kind} result, not a 'circuits edges' one.")
    circ = res.circuit(args.method, args.percent, absolute=not args.signed)
    path = export_circuit(circ, args.file, res.d_model)
    print(f"{int(circ.in_graph.sum())} edges, {int(circ.nodes.sum())} nodes -> {path}")
    return 0
