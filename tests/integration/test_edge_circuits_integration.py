"""Edge circuits on the embedded SmolLM2 (GQA: 9 query heads on 3 K/V heads): the full graph is
the clean run and the empty one the corrupted run, and the CLI's edges → export → import round
trip, with its one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def test_full_and_empty_circuits_on_smollm2(smollm2):
    from mechscope.analyses.circuits import load_circuit_task, task_pairs
    from mechscope.probes import attribution as attr
    from mechscope.probes import edge_attribution as ea

    model = smollm2.model
    pairs = task_pairs(model, load_circuit_task("ioi")[:2])
    g = ea.EdgeGraph.from_model(model)
    assert (g.n_forward, g.n_backward, g.n_edges) == (301, 841, 123211)
    clean, corrupt = attr.baseline_metrics(model, pairs)
    vals = ea.evaluate_circuits(model, pairs, [g.real, np.zeros_like(g.real)], batch_size=2)
    # float32 logits of magnitude ~20 summed in another order: a few 1e-4
    np.testing.assert_allclose(vals[0], clean, atol=2e-3)
    np.testing.assert_allclose(vals[1], corrupt, atol=2e-3)
    assert not model.cfg.use_split_qkv_input and not model.cfg.use_hook_mlp_in


def test_cli_edges_export_import(tmp_path, capsys):
    from mechscope.analyses.circuits import import_circuit
    from mechscope.app.cli import main
    from mechscope.probes.results import Result

    rc = main(["circuits", "edges", "--task", "ioi", "--n-prompts", "2", "--n-eval", "2", "--methods", "eap,random",
               "--n-random", "1", "--percentages", "1,100", "--n-boot", "20", "--n-boot-jaccard", "2",
               "--out", str(tmp_path / "e")])
    out = capsys.readouterr().out
    assert rc == 0 and "cpr" in out and "random" in out
    res = Result.load(tmp_path / "e")
    row = res.summary.set_index("method")
    assert row.loc["eap", "cpr_lo"] <= row.loc["eap", "cpr"] <= row.loc["eap", "cpr_hi"]
    rc = main(["circuits", "export", str(tmp_path / "e"), "--method", "eap", "--percent", "1", "--file", str(tmp_path / "c.json")])
    assert rc == 0
    d = json.loads((tmp_path / "c.json").read_text())
    assert d["cfg"]["n_layers"] == 30 and d["cfg"]["n_heads"] == 9 and len(d["edges"]) == 123211
    back = import_circuit(tmp_path / "c.json", res.graph)
    np.testing.assert_array_equal(back.scores, np.where(res.graph.real, res.scores[0], 0.0))
    assert back.in_graph.sum() == int(res.curves.query("method == 'eap' and curve == 'cmd' and percent == 1").n_kept.item())

    rc = main(["circuits", "edges", "--percentages", "0,100"])
    err = capsys.readouterr().err
    assert rc == 2 and "(0, 100]" in err and err.count("\n") == 1
    rc = main(["circuits", "export", str(tmp_path / "e"), "--method", "eap", "--percent", "150", "--file", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and not (tmp_path / "x.json").exists()
