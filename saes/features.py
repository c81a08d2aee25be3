"""Feature pages for an SAE (offline, Neuronpedia-like).

* :func:`sae_features` — ONE streamed pass over a text set computes, for every latent at
  once: its top-``k`` activating (text, position) contexts (a running ``topk`` merge per
  batch), its firing density, its maximum, and a histogram of its non-zero activations
  (fixed log-spaced bins). Position 0 is skipped (the SAEs were not trained on it).
* :func:`logit_effects` — each latent's decoder direction through the unembedding (final
  norm weight folded in), decoded with the neuron-decoding code
  (``probes.readout.decode_directions``): the tokens it promotes and suppresses.
* :func:`latents_on_text` — which latents fire on a text (token-level activations).
* :func:`latents_for_token` — which latents most promote a token (one mat-vec).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from mechscope.probes.errors import InputError, check_range
from mechscope.probes.results import Result, analysis
from mechscope.probes.texts import TextInputs, encode_texts, n_texts_field

HIST_EDGES = np.logspace(-2, 3, 31)  # activation histogram bins (non-zero activations)


@dataclass(frozen=True)
class SaeFeaturesParams(TextInputs):
    kind: ClassVar[str] = "sae_features"
    n_texts: int | None = n_texts_field(96)
    sae: str = field(default="smollm2-135m/resid-L12", metadata={"help": "shipped SAE name or folder"})
    k: int = field(default=10, metadata={"help": "top contexts kept per latent"})
    batch_size: int = field(default=8, metadata={"help": "texts per forward"})

    def __post_init__(self):
        super().__post_init__()
        if self.k < 1 or self.batch_size < 1 or (self.max_tokens is not None and self.max_tokens < 2):
            raise InputError("k and batch_size must be >= 1 and max_tokens >= 2.")


@dataclass(frozen=True)
class SaeFeaturesResult(Result):
    """Per latent: top contexts (value, text index, position), density, max, histogram."""

    kind: ClassVar[str] = "sae_features"
    texts: list  # the token id lists that were streamed
    top_values: np.ndarray  # [d_sae, k] descending; 0 where the latent fired fewer than k times
    top_text: np.ndarray  # [d_sae, k]
    top_pos: np.ndarray  # [d_sae, k]
    density: np.ndarray  # [d_sae]
    max_act: np.ndarray  # [d_sae]
    hist: np.ndarray  # [d_sae, len(HIST_EDGES) - 1]
    n_tokens: int

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"latent": np.arange(len(self.density)), "density": self.density,
                             "max_act": self.max_act, "top_act": self.top_values[:, 0]})

    def contexts(self, model, latent: int, window: int = 8) -> pd.DataFrame:
        """The latent's top contexts as rows (left context, token, right context, activation)."""
        from mechscope.probes.tokens import str_tokens

        check_range("latent", latent, len(self.density))
        rows = []
        for v, t, p in zip(self.top_values[latent], self.top_text[latent], self.top_pos[latent]):
            if v <= 0:
                continue
            ids = self.texts[int(t)]
            toks = str_tokens(model, ids[max(0, p - window): p + window + 1])
            c = min(window, int(p))
            rows.append({"activation": float(v), "text": int(t), "position": int(p),
                         "left": "".join(toks[:c]), "token": toks[c], "right": "".join(toks[c + 1:])})
        return pd.DataFrame(rows)

    def figures(self) -> dict:
        import plotly.graph_objects as go

        live = self.density[self.density > 0]
        fig = go.Figure(go.Histogram(x=np.log10(live), nbinsx=40))
        fig.update_layout(title=f"latent density over {self.n_tokens:,} tokens ({(self.density == 0).sum()} never fire)",
                          xaxis_title="log10 density", yaxis_title="latents")
        return {"density": fig}

    def latent_histogram(self, latent: int):
        import plotly.graph_objects as go

        check_range("latent", latent, len(self.density))
        centres = np.sqrt(HIST_EDGES[:-1] * HIST_EDGES[1:])
        fig = go.Figure(go.Bar(x=centres, y=self.hist[latent]))
        fig.update_layout(title=f"latent {latent}: activations (density {self.density[latent]:.2e})",
                          xaxis_type="log", xaxis_title="activation", yaxis_title="tokens")
        return fig


class _TopK:
    """Running top-k per latent over a stream of [N, d_sae] activation blocks."""

    def __init__(self, d_sae: int, k: int):
        self.k = k
        self.values = torch.zeros(d_sae, k)
        self.ids = torch.full((d_sae, k), -1, dtype=torch.int64)  # global token ids

    def add(self, acts: torch.Tensor, ids: torch.Tensor) -> None:
        kk = min(self.k, acts.shape[0])
        v, j = torch.topk(acts.T, kk, dim=1)  # [d_sae, kk]
        vals = torch.cat([self.values, v], 1)
        cand = torch.cat([self.ids, ids[j]], 1)
        top_v, top_j = torch.topk(vals, self.k, dim=1)
        self.values, self.ids = top_v, torch.gather(cand, 1, top_j)


@analysis(SaeFeaturesParams)
@torch.no_grad()
def sae_features(model, params: SaeFeaturesParams, progress=None) -> SaeFeaturesResult:
    """All latents' top contexts, densities and histograms in one streamed pass."""
    from mechscope.probes.capture import run
    from mechscope.probes.models import model_id
    from mechscope.saes.store import load_sae

    sae = load_sae(params.sae, model=model, cached=True)
    hook = sae.cfg.metadata.hook_name
    seqs = [t.tolist() for t in encode_texts(model, params.selected(), params.max_tokens)]
    d_sae = sae.cfg.d_sae
    top = _TopK(d_sae, params.k)
    fires = torch.zeros(d_sae, dtype=torch.int64)
    max_act = torch.zeros(d_sae)
    hist = torch.zeros(d_sae, len(HIST_EDGES) - 1, dtype=torch.int64)
    edges = torch.as_tensor(HIST_EDGES, dtype=torch.float32)
    n_tok = [0]
    T = max(len(s) for s in seqs)

    def reduce(act, site, batch):  # noqa: ARG001
        mask = batch.mask.clone()
        mask[:, 0] = False
        feats = sae.encode(act[mask].float())  # [N, d_sae]
        rows = torch.as_tensor(batch.index, device=mask.device)[:, None].expand_as(mask)[mask]
        pos = torch.arange(mask.shape[1], device=mask.device)[None, :].expand_as(mask)[mask]
        top.add(feats.cpu(), (rows * T + pos).cpu())
        nz = feats > 0
        fires.add_(nz.sum(0).cpu())
        max_act.copy_(torch.maximum(max_act, feats.amax(0).cpu()))
        lat, tok = nz.T.nonzero(as_tuple=True)
        b = torch.bucketize(feats.T[lat, tok].cpu(), edges).clamp(1, len(edges) - 1) - 1
        hist.view(-1).index_add_(0, lat.cpu() * hist.shape[1] + b, torch.ones_like(b))
        n_tok[0] += int(mask.sum())

    run(model, seqs, reducers={hook: reduce}, batch_size=params.batch_size, progress=progress or False,
        desc="SAE features")
    ids = top.ids.numpy()
    return SaeFeaturesResult(
        model_id=model_id(model), params=params, texts=seqs,
        top_values=top.values.numpy(), top_text=np.where(ids >= 0, ids // T, 0), top_pos=np.where(ids >= 0, ids % T, 0),
        density=(fires.double() / max(n_tok[0], 1)).numpy(), max_act=max_act.numpy(), hist=hist.numpy(),
        n_tokens=n_tok[0],
    )


@torch.no_grad()
def logit_effects(model, sae, latents=None, k: int = 10) -> dict[str, torch.Tensor]:
    """Top/bottom-``k`` tokens of each latent's decoder direction through the unembedding."""
    from mechscope.probes.readout import decode_directions, unembedding
    from mechscope.saes.interventions import decoder_directions

    dirs = decoder_directions(sae, latents).to(model.cfg.device)
    return decode_directions(dirs, unembedding(model, "final"), k=k)


@torch.no_grad()
def latents_on_text(model, sae, text: str, top: int = 20) -> tuple[list[str], torch.Tensor, pd.DataFrame]:
    """(tokens, activations [T, d_sae], table of the ``top`` latents by max activation)."""
    from mechscope.probes.capture import run
    from mechscope.probes.tokens import encode, str_tokens

    ids = encode(model, text)
    hook = sae.cfg.metadata.hook_name
    out = run(model, [ids], capture=[hook])
    acts = sae.encode(out.activations[hook][0].float())
    acts[0] = 0  # position 0 is not scored (see module docstring)
    mx, arg = acts.max(0)
    order = torch.argsort(mx, descending=True)[:top]
    toks = str_tokens(model, ids)
    table = pd.DataFrame({"latent": order.tolist(), "max_act": mx[order].tolist(),
                          "at_token": [toks[int(arg[i])] for i in order], "n_tokens_firing": (acts[:, order] > 0).sum(0).tolist()})
    return toks, acts, table[table["max_act"] > 0]


@torch.no_grad()
def latents_for_token(model, sae, token, top: int = 20) -> pd.DataFrame:
    """The latents whose decoder direction most raises the logit of ``token``."""
    from mechscope.probes.readout import unembedding
    from mechscope.probes.tokens import single_token, str_tokens
    from mechscope.saes.interventions import decoder_directions

    tok = single_token(model, token)
    scores = decoder_directions(sae) @ unembedding(model, "final")[:, tok].cpu()
    v, i = torch.topk(scores, top)
    return pd.DataFrame({"latent": i.tolist(), "logit_effect": v.tolist(),
                         "token": [str_tokens(model, [tok])[0]] * top})
