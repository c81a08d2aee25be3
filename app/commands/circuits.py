"""``mechscope circuits patch|discover|compare``: circuit discovery on the shipped tasks.

* ``patch``    — activation patching of every head and MLP layer (the ground truth);
* ``discover`` — the discrete-SAE method (O'Neill & Bui 2024; by default the reference's one SAE
  over all heads' outputs, ``--no-shared``: our per-head SAEs);
* ``compare``  — patching, attribution patching, EAP-IG and the discrete-SAE method on one task:
  node ROC-AUC at several ground-truth thresholds, edge ROC-AUC against path patching of the pairs
  among the top-N heads (``--edge-top-n``), runtimes, faithfulness curves.

Flags and defaults come from each analysis' Params."""

from __future__ import annotations

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
