"""The top-1 attended key of the last query, reduced inside the attention-pattern hooks.

:class:`Top1` is a reducer for :func:`probes.decoding.generate` (``reducers=top.reducers(model)``):
at every forward pass each layer's ``hook_pattern`` hands it the pattern, it keeps the argmax
over keys of the *last* query for every head (one int per head; ties to the first position,
``torch.argmax``) and drops the pattern. Its state is O(passes × layers × heads): no T×T
pattern outlives its layer. Wu et al.'s retrieval score reads these positions
(docs/retrieval.md#retrieval-score); :func:`probes.batched_greedy.greedy_rows` does the same
for rows of one batch (``top1=True``).
"""

from __future__ import annotations

import torch

from mechscope.probes.hooknames import name as hook_name


class Top1:
    """Reducer for every layer's attention pattern under :func:`probes.decoding.generate`:
    keeps, for each forward pass, the top-1 key of the last query per layer and head."""

    def __init__(self, n_layers: int, n_heads: int):
        self.n_layers, self.n_heads = n_layers, n_heads
        self.steps: list[torch.Tensor] = []  # one [L, H] long tensor per forward pass

    def __call__(self, pattern: torch.Tensor, site, batch) -> None:
        if site.layer == 0:
            self.steps.append(torch.full((self.n_layers, self.n_heads), -1, dtype=torch.long))
        self.steps[-1][site.layer] = pattern[0, :, -1].argmax(-1).cpu()

    def reducers(self, model) -> dict:
        """``{hook name: self}`` for every layer's ``pattern`` point."""
        return {hook_name("pattern", layer): self for layer in range(model.cfg.n_layers)}

    def stacked(self, n_steps: int) -> torch.Tensor:
        """[n_steps, L, H]: the first ``n_steps`` passes' top-1 positions."""
        if len(self.steps) < n_steps:
            raise RuntimeError(f"{len(self.steps)} forward passes for {n_steps} emitted tokens")
        return torch.stack(self.steps[:n_steps]) if n_steps else torch.zeros(0, self.n_layers, self.n_heads, dtype=torch.long)
