"""mechscope: a mechanistic-interpretability workbench on TransformerLens models.

The one import a script needs::

    import mechscope as ms

    model = ms.load_model()                          # the embedded SmolLM2-135M-Instruct (HookedTransformer)
    logits, cache = ms.run_with_cache(model, "The Eiffel Tower is in")
    cache["resid_post", 5]                           # [batch, pos, d_model], TransformerLens's ActivationCache
    ms.hook_name("pattern", 3)                       # "blocks.3.attn.hook_pattern"
    with ms.applied(model, [ms.HeadMask(17, 3)]):    # interventions are data; hooks exist only inside
        print(ms.generate(model, "The capital of France is", max_new_tokens=8))
    res = ms.attention_sinks(model, n_texts=8)       # every analysis by name: (model, Params) -> Result
    res.to_frame(); res.figures(); res.save("out/sinks")
    ms.analysis_names()                              # what else there is
    ms.load_result("out/sinks").rerun(model)
    sae = ms.load_sae("smollm2-135m/resid-L12")      # a shipped SAE (SAE-Lens), sha256-checked

Subpackages: ``mechscope.probes`` (models, hooked runs, interventions, decoding),
``mechscope.analyses``, ``mechscope.saes``, ``mechscope.app`` (dashboard and CLI),
``mechscope.data`` (shipped corpora and tasks). Names below load on first use, so
``import mechscope`` stays quick.
"""

from __future__ import annotations

import importlib
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if not (_HERE / "probes").is_dir() and (_HERE.parent / "probes" / "__init__.py").is_file():
    # Run from the repository (not an installed wheel): the subpackages are the repository's
    # top-level folders app/, probes/, analyses/, saes/ and data/.
    __path__.append(str(_HERE.parent))  # noqa: F821 (a package's __path__)

__version__ = "0.1.0"

_EXPORTS = {
    # models
    "load": "mechscope.probes.models:load",
    "load_model": "mechscope.probes.models:load_model",
    "available_models": "mechscope.probes.models:available_models",
    # hooked runs
    "run_with_cache": "mechscope.probes.capture:run_with_cache",
    "capture": "mechscope.probes.capture:run",
    "hook_name": "mechscope.probes.hooknames:name",
    # interventions
    "applied": "mechscope.probes.interventions:applied",
    "HeadMask": "mechscope.probes.interventions:HeadMask",
    "NeuronClamp": "mechscope.probes.interventions:NeuronClamp",
    "SteeringVector": "mechscope.probes.interventions:SteeringVector",
    "SaeSteer": "mechscope.saes.interventions:SaeSteer",
    "SaeClamp": "mechscope.saes.interventions:SaeClamp",
    "SaeSplice": "mechscope.saes.interventions:SaeSplice",
    # decoding
    "generate": "mechscope.probes.decoding:generate",
    # results
    "load_result": "mechscope.analyses.catalog:load_result",
    "Result": "mechscope.probes.results:Result",
    # SAEs
    "load_sae": "mechscope.saes.store:load_sae",
}
_SUBPACKAGES = ("probes", "analyses", "saes", "app", "data", "sweeps")


def _analyses() -> dict:
    """Every registered analysis function by its name (``attention_sinks``, ``retrieval_heads``, ...)."""
    from mechscope.analyses.catalog import import_all
    from mechscope.probes.results import ANALYSES

    import_all()
    return {fn.__name__: fn for fn in ANALYSES.values()}


def analysis_names() -> list[str]:
    """The analyses ``mechscope`` offers as functions, e.g. ``mechscope.attention_sinks(model)``."""
    return sorted(_analyses())


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"mechscope.{name}")
    target = _EXPORTS.get(name)
    if target is None:
        if not name.startswith("_") and name in _analyses():
            return _analyses()[name]
        raise AttributeError(f"module 'mechscope' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS, *_SUBPACKAGES])


__all__ = sorted([*_EXPORTS, "analysis_names"])
