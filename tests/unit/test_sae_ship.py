"""Installing a GPU run's SAEs (saes/ship.py) and choosing the architecture from compare-archs
results (benchmarks/gpu_saes.py ``best_arch``), on a tiny SAE-Lens SAE and hand-made results."""

import json

import pytest
import torch

DOMAINS = ("prose", "code")


def _summary(ev: float, ce: float, l0: float = 8.0, dead: float = 0.0) -> dict:
    return {"tokens": 100, "l0": l0, "explained_variance": ev + 0.05, "explained_variance_saebench": ev,
            "ce_recovered": ce + 0.01, "dead_fraction": dead, "tokens_skip0": 98, "explained_variance_skip0": ev,
            "ce_recovered_skip0": ce, "ce_recovered_mean_skip0": ce, "dead_fraction_skip0": dead,
            "dense_fraction_skip0": 0.0, "ce_clean": 2.0, "ce_sae": 2.1, "ce_zero": 9.0, "density": [0.1]}


def _tiny_run(tmp_path):
    """A train-general output folder with one packed tiny SAE ("topk-L3") and its results."""
    from benchmarks.gpu_saes import pack_file
    from mechscope.saes.train import train_on_activations

    acts = torch.randn(512, 12, generator=torch.Generator().manual_seed(0))
    sae = train_on_activations(acts, architecture="topk", d_sae=16, k=4, training_tokens=2048, batch_size=256,
                               hook_name="blocks.3.hook_resid_post")
    folder = tmp_path / "work" / "topk-L3"
    sae.save_model(str(folder))
    run = tmp_path / "run"
    run.mkdir()
    pack_file(folder, run / "topk-L3.safetensors")
    evals = {"float32": {"prose": _summary(0.95, 0.97), "code": _summary(0.91, 0.96)},
             "float16": {"prose": _summary(0.949, 0.969), "code": _summary(0.909, 0.959)},
             "float32:dead_all": 0.01, "float16:dead_all": 0.0125}
    spec = {"layers": [3], "architecture": "topk", "d_sae": 16, "k": 4, "training_tokens": 2048}
    (run / "train_general.json").write_text(json.dumps({
        "train": {"names": {"topk-L3": "blocks.3.hook_resid_post"}, "seconds": 1.5, "tokens": 2048,
                  "tokens_per_s": 1365.3, "autocast_lm": False, "spec": spec},
        "forward_rate": {"forward": 10.0, "forward+cache": 9.0}, "evals": {"new": {"topk-L3": evals}}}))
    (run / "corpus_manifest.json").write_text(json.dumps({"recipe": "general", "total_tokens": 2048,
                                                          "files": {"train": {"sha256": "ab" * 32}}}))
    (run / "log.txt").write_text("trained\n")
    return run


def test_ship_writes_folders_checksums_and_a_manifest_of_per_domain_evals(tmp_path):
    from mechscope.probes.checksums import sha256_file
    from mechscope.saes.ship import ship
    from mechscope.saes.store import eval_summary, load_sae

    weights = tmp_path / "weights"
    keep = weights / "other-model" / "resid-L0"
    keep.mkdir(parents=True)
    (keep / "note.txt").write_text("not the run's")  # anything else in the folder is left alone
    m = ship(_tiny_run(tmp_path), weights_dir=weights, model="tiny", device_name="test CPU")

    entry = m["saes"]["tiny/resid-L3"]
    folder = weights / "tiny" / "resid-L3"
    assert entry["sha256"] == {n: sha256_file(folder / n) for n in ("cfg.json", "sae_weights.safetensors")}
    assert entry["eval_dtype"] == "float16" and entry["dead_all"] == 0.0125  # the storage dtype's numbers
    assert entry["eval_domains"]["code"]["explained_variance_skip0"] == 0.909
    assert "density" not in entry["eval_domains"]["code"]
    assert (entry["hook_name"], entry["layer"], entry["d_sae"], entry["k"]) == ("blocks.3.hook_resid_post", 3, 16, 4)
    assert json.loads((weights / "manifest.json").read_text()) == m
    assert m["training"]["corpus"]["train_sha256"] == "ab" * 32 and m["training"]["device"] == "test CPU"
    assert (weights / "training" / "gpu_log.txt").read_text() == "trained\n"
    assert (keep / "note.txt").read_text() == "not the run's"

    s = eval_summary(entry)  # the worst domain on each measure
    assert s["explained_variance_skip0"] == 0.909 and s["ce_recovered_skip0"] == 0.959
    assert s["tokens"] == 200 and s["domains"] == 2

    sae = load_sae(str(folder))
    assert sae.cfg.d_sae == 16 and sae.W_dec.dtype == torch.float32  # stored in float16, read as float32


def test_ship_needs_the_run_results(tmp_path):
    from mechscope.probes.errors import InputError
    from mechscope.saes.ship import ship

    with pytest.raises(InputError, match="train_general.json"):
        ship(tmp_path, weights_dir=tmp_path / "w")


def test_best_arch_takes_the_best_worst_domain_ev_among_those_within_l0_and_dead(tmp_path):
    from benchmarks.gpu_saes import best_arch

    def res(ev_by_dom, l0=60.0, dead=0.01):
        return {"float32": {d: {"explained_variance": ev, "l0": l0} for d, ev in ev_by_dom.items()},
                "float32:dead_all": dead}

    path = tmp_path / "compare_archs.json"
    assert best_arch(path) == "topk"  # no results: the default
    path.write_text(json.dumps({"evals": {"new": {
        "topk-L12": res({"prose": 0.95, "code": 0.93}),
        "batchtopk-L12": res({"prose": 0.99, "code": 0.94}),  # better worst domain
        "matryoshka_batchtopk-L12": res({"prose": 0.99, "code": 0.99}, dead=0.6),  # too many dead
        "jumprelu-L12": res({"prose": 0.99, "code": 0.99}, l0=70.0),  # L0 over 64
    }}}))
    assert best_arch(path) == "batchtopk"
