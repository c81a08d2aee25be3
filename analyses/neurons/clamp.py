"""Clamp verification (Davies et al. 2025): does clamping a neuron raise p(its label token)
more than clamping random neurons of the same layer?"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from mechscope.analyses.neurons.common import METHODS, method_label, neuron_directions
from mechscope.analyses.neurons.decode import NeuronDecodeResult, decode_neurons
from mechscope.probes import hooknames
from mechscope.probes.errors import InputError, check_range
from mechscope.probes.models import model_id
from mechscope.probes.readout import NEUTRAL_PROMPTS, unembedding
from mechscope.probes.results import Params, Result, analysis
from mechscope.probes.stats import bootstrap_ci
from mechscope.probes.tokens import str_token


@dataclass(frozen=True)
class ClampVerificationResult(Result):
    """Per neuron: clamp value, mean p(label token) before/after over the prompts, Δp, and
    the same Δp for control neurons (random neurons of the same layer, same value)."""

    table: pd.DataFrame
    fraction_up: float  # neurons whose mean Δp exceeds min_delta_p
    median_delta: float  # median over neurons of the mean Δp
    pair_fraction_up: float  # (neuron, prompt) pairs with Δp > min_delta_p
    effect_over_control: float  # mean over neurons of (Δp − mean control Δp)
    effect_ci: tuple  # 95% bootstrap CI of effect_over_control (resampling neurons)
    method: str = ""

    kind = "clamp_verification"

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def figures(self) -> dict:
        import plotly.graph_objects as go

        t = self.table
        labels = [f"L{a}N{b} {c!r}" for a, b, c in zip(t["layer"], t["neuron"], t["top_token"])]
        fig = go.Figure([go.Bar(x=labels, y=t["delta_p"], name="clamped neuron"),
                         go.Bar(x=labels, y=t["control_delta_p"], name="control (random neurons, same layer)")])
        lo, hi = self.effect_ci
        fig.update_layout(barmode="group", title=f"Δ p(label token) when clamped — labels: {self.method}; "
                          f"effect over control {self.effect_over_control:+.3g} [{lo:+.3g}, {hi:+.3g}]",
                          xaxis_title="neuron", yaxis_title="Δp (mean over prompts)")
        return {"clamp_delta": fig}


@dataclass(frozen=True)
class ClampParams(Params):
    kind: ClassVar[str] = "clamp_verification"
    n: int = field(default=20, metadata={"help": "most specialised neurons to verify"})
    neurons: tuple | None = field(default=None, metadata={"help": "verify these (layer, neuron) pairs instead"})
    method: str = field(default="paper", metadata={"help": "labelling method whose labels are verified: paper | write"})
    prompts: tuple[str, ...] = field(default=tuple(NEUTRAL_PROMPTS), metadata={"help": "neutral prompts"})
    value: float | None = field(default=None, metadata={"help": "clamp value (None: factor × peak |activation|)"})
    factor: float = field(default=10.0, metadata={"help": "clamp = factor × the neuron's peak |activation|"})
    min_value: float = field(default=5.0, metadata={"help": "smallest clamp value"})
    by: str = field(default="margin", metadata={"help": "specialisation measure: margin | prob"})
    min_layer: int | None = field(default=None, metadata={"help": "only neurons of this layer and later"})
    n_controls: int = field(default=5, metadata={"help": "random control neurons (same layer, same value) per neuron"})
    min_delta_p: float = field(default=0.001, metadata={"help": "a label 'rose' only when Δp exceeds this"})
    seed: int = field(default=0, metadata={"help": "seed of the control draw and the bootstrap"})

    def __post_init__(self):
        object.__setattr__(self, "prompts", tuple(self.prompts))
        if self.neurons is not None:
            object.__setattr__(self, "neurons", tuple((int(a), int(b)) for a, b in self.neurons))
        if self.method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}.")
        if self.n_controls < 0:
            raise InputError("n_controls must be >= 0.")


@analysis(ClampParams)
def clamp_verification(model, params: ClampParams, decoded: NeuronDecodeResult | None = None) -> ClampVerificationResult:
    """Does clamping a neuron raise the probability of the token that labels it?

    Labels come from ``method`` (default the paper's up-projection decoding, arXiv
    2501.02688). Each of the ``n`` most specialised neurons (or the given pairs) is clamped
    at every position, and at the last position of each neutral prompt the change of
    p(label token) is measured. The same clamp applied to ``n_controls`` random neurons of
    the same layer gives the control Δp for that token: the effect over control (with a
    bootstrap CI over neurons) separates "this neuron promotes its label" from "any large
    clamp in this layer moves this token". A label counts as risen only when its Δp exceeds
    ``min_delta_p``.
    """
    from mechscope.probes.capture import run
    from mechscope.probes.interventions import NeuronClamp

    p = params
    prompts = [q for q in p.prompts if (q.strip() if isinstance(q, str) else len(q) > 0)]
    if not prompts:
        raise InputError("No prompts given for the clamp verification.")
    direction, norm = METHODS[p.method]
    if p.neurons is None:
        layers_sel = None if p.min_layer is None else tuple(range(p.min_layer, model.cfg.n_layers))
        if decoded is None:
            decoded = decode_neurons(model, k=2, method=p.method, layers=layers_sel)
        spec = decoded.specialised(p.n, min_layer=p.min_layer, by=p.by)
        pairs = list(zip(spec["layer"].tolist(), spec["neuron"].tolist()))
        targets = spec["top_id"].tolist()
    else:
        pairs = list(p.neurons)
        for a, b in pairs:
            check_range("layer", a, model.cfg.n_layers)
            check_range("neuron", b, model.cfg.d_mlp)
        W = unembedding(model, norm)
        targets = [int(torch.argmax(neuron_directions(model, a, direction)[b] @ W)) for a, b in pairs]
    if not pairs:
        raise InputError("No neurons to verify.")
    layers = sorted({a for a, _ in pairs})
    peak: dict[int, torch.Tensor] = {}

    def reduce(t, site, batch):
        a = t[batch.mask].detach().abs().amax(0).float().cpu()
        peak[site.layer] = torch.maximum(peak.get(site.layer, a), a)

    base = run(model, prompts, reducers={hooknames.name("mlp_post", a): reduce for a in layers},
               return_logits=True, batch_size=len(prompts))
    p0 = torch.stack([torch.softmax(lg[-1].float(), -1) for lg in base.logits])  # [P, V]

    def clamped(layer: int, neuron: int, v: float) -> torch.Tensor:
        out = run(model, prompts, return_logits=True, batch_size=len(prompts),
                  interventions=[NeuronClamp(layer, neuron, value=v)])
        return torch.stack([torch.softmax(lg[-1].float(), -1) for lg in out.logits])

    rng = np.random.default_rng(p.seed)
    rows = []
    pair_up = 0
    for (layer, neuron), tgt in zip(pairs, targets):
        v = float(p.value) if p.value is not None else max(p.min_value, p.factor * float(peak[layer][neuron]))
        p1 = clamped(layer, neuron, v)
        d = p1[:, tgt] - p0[:, tgt]
        others = [int(x) for x in rng.choice(np.setdiff1d(np.arange(model.cfg.d_mlp), [neuron]), p.n_controls,
                                               replace=False)] if p.n_controls else []
        ctrl = [float((clamped(layer, c, v)[:, tgt] - p0[:, tgt]).mean()) for c in others]
        pair_up += int((d > p.min_delta_p).sum())
        control = float(np.mean(ctrl)) if ctrl else 0.0
        rows.append({"layer": layer, "neuron": neuron, "top_token": str_token(model, tgt), "top_id": tgt,
                     "clamp_value": v, "p_before": float(p0[:, tgt].mean()), "p_after": float(p1[:, tgt].mean()),
                     "delta_p": float(d.mean()), "control_delta_p": control, "over_control": float(d.mean()) - control,
                     "control_neurons": ",".join(map(str, others)),
                     "prompts_up": float((d > p.min_delta_p).float().mean()),
                     "top1_after": float((p1.argmax(-1) == tgt).float().mean())})
    table = pd.DataFrame(rows)

    over = table["over_control"].to_numpy()
    ci = bootstrap_ci(over, n_boot=2000, seed=p.seed)[1:] if len(over) > 1 else (float(over[0]), float(over[0]))
    return ClampVerificationResult(
        model_id=model_id(model), params=params, table=table,
        fraction_up=float((table["delta_p"] > p.min_delta_p).mean()),
        median_delta=float(table["delta_p"].median()), pair_fraction_up=pair_up / (len(pairs) * len(prompts)),
        effect_over_control=float(over.mean()), effect_ci=tuple(ci),
        method=method_label(p.method, direction, norm),
    )
