"""The discrete-SAE method (O'Neill & Bui 2024) on prompt pairs (docs/circuits.md#discrete-sae-circuits).

Every head's output on every positive (clean) and negative (corrupted) prompt, one small SAE
(by default the reference's one SAE shared by all heads, :mod:`saes.discrete`), a head's code
= its argmax latent; node score = codes on positive prompts only, softmaxed over heads; edge
score = code pairs co-occurring on positive prompts only.
"""

from __future__ import annotations

import numpy as np
import torch

from mechscope.analyses.circuits.params import CircuitDiscoverParams
from mechscope.probes import attribution as attr

#: the method's name in :func:`analyses.circuits.circuit_compare` and its results
SAE_METHOD = "discrete_sae"


def sae_scores(model, pairs: attr.Pairs, p: CircuitDiscoverParams | None = None, **kw):
    """Run the discrete-SAE method: (node scores [L, H], unique counts [L, H], edge counts, top codes)."""
    from mechscope.saes import discrete

    p = p or CircuitDiscoverParams(**kw)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    cp, cn = sae_codes(model, pairs, p)
    counts = discrete.unique_positive_counts(cp, cn)
    labels = np.r_[np.ones(len(cp), bool), np.zeros(len(cn), bool)]
    return (discrete.softmax(counts).reshape(L, H), counts.reshape(L, H), discrete.edge_counts(cp, cn, p.n_latents),
            tuple(discrete.top_codes(np.concatenate([cp, cn]), labels)))


def sae_codes(model, pairs: attr.Pairs, p: CircuitDiscoverParams) -> tuple[np.ndarray, np.ndarray]:
    """The discrete codes [N, heads] of the positive (clean) and negative (corrupted) prompts."""
    from mechscope.saes import discrete

    iso = p.isometric and not p.shared
    pos = attr.head_vectors(model, pairs.clean, pairs.lengths, isometric=iso, positions=p.positions)
    neg = attr.head_vectors(model, pairs.corrupt, pairs.lengths, isometric=iso, positions=p.positions)
    x = torch.cat([pos, neg]).to(model.cfg.device)
    saes_ = discrete.train_head_saes(x, p.n_latents, p.l1, p.epochs, p.lr, p.shared, p.seed, p.n_train or None)
    codes = saes_.codes(x).numpy()
    return codes[: len(pos)], codes[len(pos):]
