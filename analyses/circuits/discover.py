"""``circuit_discover``: the discrete-SAE method alone (O'Neill & Bui 2024; docs/circuits.md#discrete-sae-circuits)."""

from __future__ import annotations

import time

from mechscope.analyses.circuits.params import CircuitDiscoverParams
from mechscope.analyses.circuits.results import CircuitDiscoverResult
from mechscope.analyses.circuits.sae import sae_scores
from mechscope.analyses.circuits.tasks import positive_pairs
from mechscope.probes.models import model_id
from mechscope.probes.results import analysis


@analysis(CircuitDiscoverParams)
def circuit_discover(model, params: CircuitDiscoverParams) -> CircuitDiscoverResult:
    pairs, check = positive_pairs(model, params.task, params.n_prompts)
    t0 = time.perf_counter()
    scores, counts, edges, codes = sae_scores(model, pairs, params)
    return CircuitDiscoverResult(model_id=model_id(model), params=params, node_scores=scores, unique_counts=counts,
                                 edge_counts=edges, top_codes=codes, check=check, seconds=time.perf_counter() - t0,
                                 n_used=len(pairs))
