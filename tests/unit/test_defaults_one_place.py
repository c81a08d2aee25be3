"""Defaults that live in one place: ACT's β (every entry point takes ``probes.act.BETA``) and
``mechscope sae train`` (the training module's ``TrainSpec`` defaults are the CLI's)."""

import inspect

from mechscope.probes import act as pact


def test_act_beta_has_one_home():
    from mechscope.analyses import act as aact

    assert pact.BETA == 0.4  # Yu et al. 2024
    assert aact.ACTParams().beta == pact.BETA
    assert pact.ACTCalibration(0, (1,)).beta == pact.BETA
    for fn in (pact.calibrate, pact.act_interventions, aact.score, aact.act_search, aact.act_search_reference,
               aact.act_evaluate):
        assert inspect.signature(fn).parameters["beta"].default == pact.BETA, fn.__name__


def test_sae_train_cli_takes_the_module_defaults(tmp_path):
    from mechscope.app.cli import build_parser
    from mechscope.saes.train import TrainSpec

    args = build_parser().parse_args(["sae", "train", "--out", str(tmp_path)])
    spec = TrainSpec()
    assert args.arch == spec.architecture
    assert int(args.tokens) == spec.training_tokens
    assert args.d_sae == spec.d_sae and args.k == spec.k
    assert tuple(int(x) for x in args.layers.split(",")) == spec.layers


def test_the_training_defaults_reproduce_the_shipped_saes():
    """TrainSpec() is the recipe of the shipped SAEs (their manifest), and the module's own
    command line takes the same defaults."""
    import json
    from pathlib import Path

    from mechscope.saes import train

    manifest = json.loads((Path(train.__file__).parent / "weights" / "manifest.json").read_text())
    shipped = manifest["training"]["spec"]
    spec = train.TrainSpec()
    assert spec.architecture == shipped["architecture"] == "topk"
    assert (spec.d_sae, spec.k, spec.lr, spec.batch_tokens) == (shipped["d_sae"], shipped["k"], shipped["lr"],
                                                                 shipped["batch_tokens"])
    assert tuple(spec.layers) == tuple(shipped["layers"])
    assert abs(spec.training_tokens - shipped["training_tokens"]) <= spec.batch_tokens * 20  # whole batches
    seen = {}

    def stop(spec, device):
        seen["spec"] = spec
        raise SystemExit(0)

    import pytest

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "estimate_seconds", stop)
        with pytest.raises(SystemExit):
            train.main(["--out", "unused"])
    assert seen["spec"] == spec
