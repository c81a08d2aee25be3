"""Steering verification: does adding a latent's decoder direction raise the tokens it promotes?

As the neuron clamp verification (``analyses.neurons.clamp_verification``): pick the ``n``
latents whose logit effect (decoder direction through the unembedding) is most specific
(largest gap between their first and second promoted token), steer each at every position
(``SaeSteer``) with ``value = factor ×`` the mean residual norm at the hook, and measure at
the last position of neutral prompts the change in probability of the latent's top
promoted token. Reports the fraction of latents whose mean Δp > 0 and the median Δp.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pandas as pd
import torch

from mechscope.probes.errors import InputError
from mechscope.probes.results import Params, Result, analysis


@dataclass(frozen=True)
class SteerVerifyParams(Params):
    kind: ClassVar[str] = "sae_steer_verify"
    sae: str = field(default="smollm2-135m/resid-L12", metadata={"help": "SAE name"})
    n: int = field(default=10, metadata={"help": "latents to verify"})
    factor: float = field(default=1.0, metadata={"help": "steering value / mean residual norm"})


@dataclass(frozen=True)
class SteerVerifyResult(Result):
    kind: ClassVar[str] = "sae_steer_verify"
    table: pd.DataFrame
    fraction_up: float
    median_delta: float

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def figures(self) -> dict:
        import plotly.graph_objects as go

        t = self.table
        fig = go.Figure(go.Bar(x=[f"{a} {b!r}" for a, b in zip(t["latent"], t["top_token"])], y=t["delta_p"]))
        fig.update_layout(title=f"Δp(top promoted token) when steered: {100 * self.fraction_up:.0f}% up, "
                                f"median {self.median_delta:.3g}", xaxis_title="latent", yaxis_title="Δp")
        return {"steer_delta": fig}


@analysis(SteerVerifyParams)
@torch.no_grad()
def steer_verification(model, params: SteerVerifyParams) -> SteerVerifyResult:
    from mechscope.probes.readout import NEUTRAL_PROMPTS
    from mechscope.probes.tokens import str_token
    from mechscope.probes.capture import run
    from mechscope.probes.models import model_id
    from mechscope.saes.features import logit_effects
    from mechscope.saes.interventions import SaeSteer
    from mechscope.saes.store import load_sae

    if params.n < 1:
        raise InputError("n must be >= 1.")
    sae = load_sae(params.sae, model=model, cached=True)
    hook = sae.cfg.metadata.hook_name
    le = logit_effects(model, sae, k=2)
    gap = le["top_logits"][:, 0] - le["top_logits"][:, 1]
    latents = torch.topk(gap, params.n).indices.tolist()
    prompts = list(NEUTRAL_PROMPTS)
    norms = []

    def grab(t, site, batch):  # noqa: ARG001
        m = batch.mask.clone()
        m[:, 0] = False
        norms.append(t[m].float().norm(dim=-1))

    base = run(model, prompts, reducers={hook: grab}, return_logits=True, batch_size=len(prompts))
    value = params.factor * float(torch.cat(norms).mean())
    p0 = torch.stack([torch.softmax(lg[-1].float(), -1) for lg in base.logits])
    rows = []
    for lat in latents:
        tgt = int(le["top_ids"][lat, 0])
        out = run(model, prompts, return_logits=True, batch_size=len(prompts),
                  interventions=[SaeSteer(params.sae, lat, value)])
        p1 = torch.stack([torch.softmax(lg[-1].float(), -1) for lg in out.logits])
        d = p1[:, tgt] - p0[:, tgt]
        rows.append({"latent": lat, "top_token": str_token(model, tgt), "value": value,
                     "p_before": float(p0[:, tgt].mean()), "p_after": float(p1[:, tgt].mean()),
                     "delta_p": float(d.mean()), "prompts_up": float((d > 0).float().mean())})
    table = pd.DataFrame(rows)
    return SteerVerifyResult(model_id=model_id(model), params=params, table=table,
                             fraction_up=float((table["delta_p"] > 0).mean()), median_delta=float(table["delta_p"].median()))
