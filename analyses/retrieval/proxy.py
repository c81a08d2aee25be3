"""The induction-score proxy of the retrieval score (docs/retrieval.md#retrieval-score)."""

from __future__ import annotations

import numpy as np
import torch

from mechscope.probes.capture import run as capture_run
from mechscope.probes.hooknames import name as hook_name


def induction_scores(model, n_seqs: int = 8, half: int = 50, seed: int = 0) -> np.ndarray:
    """[L, H] mean attention from each token of the second copy of a random sequence to the
    token right after its first occurrence (random ids from the upper half of the vocab)."""
    g = torch.Generator().manual_seed(seed)
    lo = model.cfg.d_vocab // 2
    base = torch.randint(lo, model.cfg.d_vocab, (n_seqs, half), generator=g)
    seqs = torch.cat([base, base], 1)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    acc = torch.zeros(L, H, dtype=torch.float64)
    q = torch.arange(half, 2 * half)
    k = q - half + 1

    def red(pattern, site, batch):
        acc[site.layer] += pattern[:, :, q, k].double().sum((0, 2)).cpu()

    capture_run(model, seqs, reducers={hook_name("pattern", l): red for l in range(L)}, batch_size=n_seqs)
    return (acc / (n_seqs * half)).numpy()
