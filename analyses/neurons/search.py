"""Which neurons most promote token / string X: one mat-vec over every neuron."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pandas as pd
import torch

from mechscope.analyses.neurons.common import (
    check_norm_direction,
    layer_matvec,
    method_label,
    neuron_directions,
    resolve_method,
)
from mechscope.probes.errors import InputError, check_range
from mechscope.probes.models import model_id
from mechscope.probes.readout import final_gamma
from mechscope.probes.results import Params, Result, analysis
from mechscope.probes.tokens import str_tokens, token_ids


@dataclass(frozen=True)
class SearchParams(Params):
    kind: ClassVar[str] = "neuron_search"
    token: str | int = field(default=" dog", metadata={"help": "a token string (or id)"})
    top: int = field(default=20, metadata={"help": "neurons to list"})
    method: str = field(default="write", metadata={"help": "paper | write | custom"})
    norm: str | None = field(default=None, metadata={"help": "custom method: final | raw"})
    direction: str | None = field(default=None, metadata={"help": "custom method: out | up | gate"})
    layers: tuple[int, ...] | None = field(default=None, metadata={"help": "layers to search (None: all)"})

    def __post_init__(self):
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))


@dataclass(frozen=True)
class NeuronSearchResult(Result):
    """The neurons that most promote a token, by the named decoding method."""

    table: pd.DataFrame
    method: str

    kind = "neuron_search"

    def to_frame(self) -> pd.DataFrame:
        return self.table


@analysis(SearchParams)
def neurons_for_token(model, params: SearchParams) -> NeuronSearchResult:
    """The ``top`` neurons with the largest decoded logit for ``token``.

    Exact over all neurons: the column ``W_U[:, t]`` (γ folded in for the final norm) times
    every neuron's direction — one [neurons × d_model] mat-vec. A string that tokenises into
    several tokens is scored by the mean logit over its tokens. Each row also gives the
    token's rank in that neuron's full decoded vocabulary (1 = the neuron's top token) and
    the neuron's top tokens.
    """
    token, top, layers = params.token, params.top, params.layers
    direction, norm = resolve_method(params.method, params.direction, params.norm)
    check_norm_direction(model, norm, direction)
    if top < 1:
        raise InputError("top must be at least 1.")
    ids = token_ids(model, token)
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    if not layers:
        raise InputError("No layers to search.")
    for layer in layers:
        check_range("layer", layer, model.cfg.n_layers)
    with torch.no_grad():
        WU = model.W_U.detach().float()
        g = final_gamma(model) if norm == "final" else None
        col = WU[:, ids].mean(dim=1)
        if g is not None:
            col = col * g
        scores = torch.cat([layer_matvec(model, layer, direction, col) for layer in layers])
        vals, idx = torch.topk(scores, min(top, len(scores)))
        N = model.cfg.d_mlp
        rows = torch.stack([neuron_directions(model, layers[int(i) // N], direction)[int(i) % N] for i in idx])
        full = (rows * g if g is not None else rows) @ WU  # [top, vocab]: ranks and top tokens of the hits
        tok_logit = full[:, ids].mean(dim=1, keepdim=True)
        ranks = (full > tok_logit).sum(dim=1) + 1
        tops = torch.topk(full, 5, dim=1).indices
    N = model.cfg.d_mlp
    label = method_label(params.method, direction, norm)
    table = pd.DataFrame({
        "layer": [layers[int(i) // N] for i in idx],
        "neuron": [int(i) % N for i in idx],
        "logit": vals.numpy(),
        "rank_of_token": ranks.numpy(),
        "top_tokens": [" | ".join(str_tokens(model, row)) for row in tops],
        "query_tokens": [" | ".join(str_tokens(model, ids))] * len(idx),
        "method": label,
    })
    return NeuronSearchResult(model_id=model_id(model), params=params, table=table, method=label)
