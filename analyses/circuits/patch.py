"""``circuit_patch``: the node ground truth, activation patching of every head and MLP layer (docs/circuits.md#activation-patching)."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from mechscope.analyses.circuits.params import CircuitPatchParams
from mechscope.analyses.circuits.results import CircuitPatchResult
from mechscope.analyses.circuits.tasks import positive_pairs
from mechscope.probes import attribution as attr
from mechscope.probes.models import model_id
from mechscope.probes.results import analysis


@analysis(CircuitPatchParams)
def circuit_patch(model, params: CircuitPatchParams, progress: Callable[[int, int], None] | None = None) -> CircuitPatchResult:
    """Noising (corrupted → clean) and denoising (clean → corrupted) effect of every node, as
    the fraction of the clean–corrupted logit-difference gap it moves."""
    pairs, check = positive_pairs(model, params.task, params.n_prompts)
    t0 = time.perf_counter()
    heads, mlps = [], []
    for d in params.directions:
        eff = attr.patch_nodes(model, pairs, d, params.batch_size, progress=progress)
        h, m = eff.normalised()
        heads.append(h)
        mlps.append(m)
    return CircuitPatchResult(model_id=model_id(model), params=params, directions=params.directions,
                              heads=np.stack(heads), mlp=np.stack(mlps), check=check,
                              seconds=time.perf_counter() - t0, n_used=len(pairs))
