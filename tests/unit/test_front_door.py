"""`import mechscope` is the one import a script needs: models, hooked runs with a cache indexed by
(point, layer), hook names, interventions, every analysis by name, saved results, SAEs."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms


def test_front_door_names_resolve_to_the_subpackages():
    from mechscope.probes import capture, hooknames, interventions, models
    from mechscope.saes import store

    assert ms.load_model is models.load_model and ms.run_with_cache is capture.run_with_cache
    assert ms.hook_name is hooknames.name and ms.HeadMask is interventions.HeadMask and ms.load_sae is store.load_sae
    assert {"attention_sinks", "retrieval_heads", "isotropy", "circuit_compare", "sae_eval"} <= set(ms.analysis_names())
    assert ms.attention_sinks.params_cls.__name__ == "SinkParams"
    with pytest.raises(AttributeError):
        ms.no_such_thing


def test_front_door_capture_and_intervene(tiny, tmp_path):
    logits, cache = ms.run_with_cache(tiny, torch.tensor([[1, 2, 3, 4]]), names=[ms.hook_name("resid_post", 1)])
    assert cache["resid_post", 1].shape == (1, 4, tiny.cfg.d_model) and logits.shape[-1] == tiny.cfg.d_vocab
    with ms.applied(tiny, [ms.HeadMask(0, 1)]):
        masked = tiny(torch.tensor([[1, 2, 3, 4]]))
    assert not torch.allclose(masked, logits)
    assert torch.allclose(tiny(torch.tensor([[1, 2, 3, 4]])), logits)  # nothing left behind


def test_every_subpackage_is_listed_for_the_wheel():
    """pyproject's explicit package list (the folders map onto ``mechscope.*``) names every
    folder with an ``__init__.py``: a new subpackage left out would be missing from the wheel."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"mechscope"} | {
        "mechscope." + ".".join(init.parent.relative_to(root).parts)
        for top in ("app", "probes", "analyses", "saes", "data", "sweeps") for init in (root / top).rglob("__init__.py")
    }
    assert found == listed, f"missing {sorted(found - listed)}, stale {sorted(listed - found)}"
