"""Neurons over a text set: one neuron's max-activating contexts, and the taxonomy of Voita et
al. 2023 ("Neurons in LLMs: Dead, N-gram, Positional")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from mechscope.analyses.neurons.common import context
from mechscope.probes import hooknames
from mechscope.probes.errors import InputError, check_range
from mechscope.probes.models import model_id
from mechscope.probes.results import Result, analysis
from mechscope.probes.texts import TextInputs, encode_texts
from mechscope.probes.tokens import vocab_strings


@dataclass(frozen=True)
class MaxActivatingResult(Result):
    """The top contexts of one neuron over a text set, and all its activations."""

    layer: int
    neuron: int
    contexts: pd.DataFrame  # rank, text, pos, token, activation, context
    activations: np.ndarray  # every real token's activation (for the histogram)

    kind = "max_activating"

    def to_frame(self) -> pd.DataFrame:
        return self.contexts

    def figures(self) -> dict:
        import plotly.graph_objects as go

        fig = go.Figure(go.Histogram(x=self.activations, nbinsx=80))
        fig.update_layout(title=f"Activations of L{self.layer}N{self.neuron} over {len(self.activations)} tokens",
                          xaxis_title="activation (mlp.hook_post)", yaxis_title="tokens", yaxis_type="log")
        return {"activation_histogram": fig}


@dataclass(frozen=True)
class _NeuronTexts(TextInputs):
    """Results saved before the shared text fields named the text cap ``max_texts`` and
    applied it to given texts too."""

    LEGACY_FIELDS: ClassVar[dict] = {"max_texts": "n_texts"}

    @classmethod
    def upgrade_saved(cls, fields: dict) -> dict:
        out = super().upgrade_saved(fields)
        if out.get("texts") is not None and out.get("n_texts") is not None and "max_texts" in fields:
            out["texts"], out["n_texts"] = list(out["texts"])[: out["n_texts"]], None
        return out


@dataclass(frozen=True)
class MaxActParams(_NeuronTexts):
    kind: ClassVar[str] = "max_activating"
    layer: int = field(default=0, metadata={"help": "layer"})
    neuron: int = field(default=0, metadata={"help": "neuron"})
    k: int = field(default=10, metadata={"help": "contexts to keep"})
    window: int = field(default=12, metadata={"help": "tokens of context before the token"})
    batch_size: int = field(default=8, metadata={"help": "texts per forward pass"})


@analysis(MaxActParams)
def max_activating(model, params: MaxActParams, progress=False) -> MaxActivatingResult:
    """Top-``k`` (text, position, activation) of one neuron over a text set, with ``window``
    tokens of context before the token (⟦marked⟧) and three after. Keeps one float per token."""
    layer, neuron, k, window = params.layer, params.neuron, params.k, params.window
    max_tokens, batch_size = params.max_tokens, params.batch_size
    check_range("layer", layer, model.cfg.n_layers)
    check_range("neuron", neuron, model.cfg.d_mlp)
    if k < 1 or window < 0:
        raise InputError("k must be at least 1 and window at least 0.")
    seqs = encode_texts(model, params.selected(), max_tokens)
    from mechscope.probes.capture import run

    acts: list[torch.Tensor | None] = [None] * len(seqs)

    def reduce(t: torch.Tensor, name: str, batch) -> None:
        for b, (i, n) in enumerate(zip(batch.index, batch.lengths.tolist())):
            acts[i] = t[b, :n, neuron].detach().float().cpu()

    run(model, seqs, reducers={hooknames.name("mlp_post", layer): reduce}, batch_size=batch_size, progress=progress)
    flat = torch.cat(acts)  # type: ignore[arg-type]
    where = [(i, p) for i, a in enumerate(acts) for p in range(len(a))]  # type: ignore[arg-type]
    order = torch.topk(flat, min(k, len(flat))).indices.tolist()
    from mechscope.probes.tokens import str_tokens

    rows = []
    for r, f in enumerate(order):
        i, p = where[f]
        rows.append({"rank": r + 1, "text": i, "pos": p, "token": str_tokens(model, seqs[i][p : p + 1])[0],
                     "activation": float(flat[f]), "context": context(model, seqs[i], p, window)})
    return MaxActivatingResult(
        model_id=model_id(model),
        params=params,
        layer=layer, neuron=neuron, contexts=pd.DataFrame(rows), activations=flat.numpy(),
    )


@dataclass(frozen=True)
class NeuronActivityResult(Result):
    """Per-neuron activity statistics over a text set and the Voita et al. taxonomy.

    Arrays are [n_layers, d_mlp]. ``category``: 0 = ordinary, 1 = dead, 2 = token detector,
    3 = positional, 4 = n-gram detector (see :func:`neuron_activity` for the rules).
    """

    layers: list
    n_tokens: int
    max_act: torch.Tensor
    min_act: torch.Tensor  # most negative activation seen
    fire_rate: torch.Tensor  # fraction of tokens with |activation| > threshold
    top_token_ids: torch.Tensor  # [L, N, n_top] the token types it fires on most (-1: none)
    top_token_share: torch.Tensor  # share of its firings that come from those n_top types
    top_token_coverage: torch.Tensor  # fraction of the top type's occurrences on which it fires
    eta2_token: torch.Tensor  # variance explained by the token type (correlation ratio)
    eta2_pos: torch.Tensor  # variance explained by the position
    pos_mean: torch.Tensor  # [L, N, P] mean activation per position bucket
    category: torch.Tensor
    vocab: np.ndarray
    top_bigrams: torch.Tensor | None = None  # [L, N, n_top, 2] (previous, current) token ids (-1: none)
    bigram_share: torch.Tensor | None = None  # share of its firings from those bigram types
    bigram_coverage: torch.Tensor | None = None  # fraction of the top bigram's occurrences it fires on
    unigram_coverage: torch.Tensor | None = None  # ... of the occurrences of that bigram's current token

    kind = "neuron_activity"
    CATEGORIES = ("ordinary", "dead", "token detector", "positional", "n-gram detector")

    def counts(self) -> pd.DataFrame:
        """Per layer: how many neurons fall in each category."""
        rows = []
        for i, layer in enumerate(self.layers):
            c = torch.bincount(self.category[i].long(), minlength=len(self.CATEGORIES))
            rows.append({"layer": layer, **{name: int(c[j]) for j, name in enumerate(self.CATEGORIES)}})
        return pd.DataFrame(rows)

    def neurons(self, category: str) -> pd.DataFrame:
        if category not in self.CATEGORIES:
            raise InputError(f"Unknown category {category!r}: one of {', '.join(self.CATEGORIES)}.")
        c = self.CATEGORIES.index(category)
        li, ni = torch.nonzero(self.category == c, as_tuple=True)
        table = pd.DataFrame({
            "layer": [self.layers[int(i)] for i in li], "neuron": ni.numpy(),
            "fire_rate": self.fire_rate[li, ni].numpy(), "max_act": self.max_act[li, ni].numpy(),
            "min_act": self.min_act[li, ni].numpy(),
            "top_tokens": [" | ".join(str(self.vocab[int(t)]) for t in self.top_token_ids[a, b] if t >= 0)
                           for a, b in zip(li.tolist(), ni.tolist())],
            "top_token_share": self.top_token_share[li, ni].numpy(),
            "eta2_pos": self.eta2_pos[li, ni].numpy(), "eta2_token": self.eta2_token[li, ni].numpy(),
        })
        if self.top_bigrams is not None:
            table["top_bigrams"] = [" | ".join(f"{self.vocab[int(a)]!r}+{self.vocab[int(b)]!r}" for a, b in self.top_bigrams[i, j] if b >= 0)
                                    for i, j in zip(li.tolist(), ni.tolist())]
            table["bigram_share"] = self.bigram_share[li, ni].numpy()
            table["bigram_coverage"] = self.bigram_coverage[li, ni].numpy()
            table["unigram_coverage"] = self.unigram_coverage[li, ni].numpy()
        return table

    def to_frame(self) -> pd.DataFrame:
        return self.counts()

    def figures(self) -> dict:
        import plotly.graph_objects as go

        c = self.counts()
        fig = go.Figure()
        for name in self.CATEGORIES[1:]:
            fig.add_trace(go.Bar(x=c["layer"], y=c[name], name=name))
        fig.update_layout(barmode="group", title=f"Neuron types per layer over {self.n_tokens} tokens "
                          f"(|activation| > {self.params.threshold:g})", xaxis_title="layer", yaxis_title="neurons")
        return {"taxonomy_by_layer": fig}


@dataclass(frozen=True)
class ActivityParams(_NeuronTexts):
    kind: ClassVar[str] = "neuron_activity"
    threshold: float = field(default=0.5, metadata={"help": "a neuron fires where |activation| exceeds this"})
    layers: tuple[int, ...] | None = field(default=None, metadata={"help": "layers (None: all)"})
    n_top_types: int = field(default=3, metadata={"help": "token types that may explain a detector"})
    token_share: float = field(default=0.8, metadata={"help": "share of firings from the top types"})
    min_coverage: float = field(default=0.5, metadata={"help": "fraction of the top type's occurrences it fires on"})
    min_fires: int = field(default=5, metadata={"help": "firings needed to call a detector"})
    positional_r2: float = field(default=0.5, metadata={"help": "η² of position for a positional neuron"})
    positional_ratio: float = field(default=2.0, metadata={"help": "η²(position) / η²(token) for a positional neuron"})
    max_types: int = field(default=512, metadata={"help": "most frequent token types told apart"})
    max_bigrams: int = field(default=512, metadata={"help": "most frequent bigram types told apart (n-gram detectors)"})
    max_positions: int = field(default=128, metadata={"help": "position buckets"})
    batch_size: int = field(default=8, metadata={"help": "texts per forward pass"})

    def __post_init__(self):
        super().__post_init__()
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))


@analysis(ActivityParams)
def neuron_activity(model, params: ActivityParams, progress=False) -> NeuronActivityResult:
    """Streaming activity statistics and a taxonomy after Voita et al. 2023.

    A neuron *fires* on a token when its ``mlp.hook_post`` activation is far from zero:
    ``|activation| > threshold``. Voita et al. study ReLU models, where "activates" means
    > 0; a SiLU-gated activation silu(gate)·up takes either sign (the up projection has no
    sign constraint) and is almost never exactly 0, so a neuron that only ever goes strongly
    negative is active, not dead, and the threshold (default 0.5) is on the magnitude.

    * **dead**: never fires over the text set.
    * **token detector**: fires at least ``min_fires`` times; at least ``token_share`` of its
      firings come from its ``n_top_types`` most frequent token types, and it fires on at
      least ``min_coverage`` of the occurrences of its top type (so it is *selective* and
      *reliable* for that token). Only the ``max_types`` most frequent token types of the
      text set are told apart (rarer ones share one bucket, never counted as detected).
    * **positional**: the position explains at least ``positional_r2`` of its activation
      variance (correlation ratio η² over position buckets, positions ≥ ``max_positions``−1
      share the last) and at least ``positional_ratio`` × what the token type explains.
      Voita et al. measure this with mutual information; η² is the variance analogue.

    * **n-gram detector** (bigrams): not a token detector; fires at least ``min_fires`` times,
      at least ``token_share`` of its firings come from its ``n_top_types`` most frequent
      (previous, current) token pairs, it fires on at least ``min_coverage`` of the
      occurrences of its top pair, but on *less* than ``min_coverage`` of the occurrences of
      that pair's current token — the preceding token is needed, as in Voita et al.'s n-gram
      neurons. Only the ``max_bigrams`` most frequent pairs are told apart.

    State is O(layers × neurons × (types + bigrams + positions)), never the activations.
    """
    p = params
    threshold, layers, n_top_types, token_share = p.threshold, p.layers, p.n_top_types, p.token_share
    min_coverage, min_fires, positional_r2, positional_ratio = p.min_coverage, p.min_fires, p.positional_r2, p.positional_ratio
    max_types, max_positions, max_tokens, batch_size = p.max_types, p.max_positions, p.max_tokens, p.batch_size
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    for layer in layers:
        check_range("layer", layer, model.cfg.n_layers)
    if max_positions < 2 or max_types < 1 or n_top_types < 1:
        raise InputError("max_positions must be ≥ 2 and max_types, n_top_types ≥ 1.")
    seqs = encode_texts(model, params.selected(), max_tokens)
    all_ids = torch.cat(seqs)
    uniq, freq = torch.unique(all_ids, return_counts=True)
    keep = torch.argsort(freq, descending=True)[:max_types]
    tracked = uniq[keep]
    U = len(tracked)
    type_of = torch.full((model.cfg.d_vocab,), U, dtype=torch.long)  # U = the "other" bucket
    type_of[tracked] = torch.arange(U)
    n_type = torch.bincount(type_of[all_ids], minlength=U + 1).double()
    V = model.cfg.d_vocab
    bigrams = torch.cat([torch.cat([torch.tensor([-1]), q[:-1] * V + q[1:]]) for q in (x.long() for x in seqs)])
    buniq, bfreq = torch.unique(bigrams[bigrams >= 0], return_counts=True)
    bkeep = torch.sort(buniq[torch.argsort(bfreq, descending=True)[:max(int(p.max_bigrams), 0)]]).values
    B = len(bkeep)

    def bigram_type(ids: torch.Tensor) -> torch.Tensor:  # bigram code -> 0..B-1, or B ("other")
        if B == 0:
            return torch.full_like(ids, B)
        j = torch.searchsorted(bkeep, ids).clamp(max=B - 1)
        return torch.where(bkeep[j] == ids, j, torch.full_like(j, B))

    n_bigram = torch.bincount(bigram_type(bigrams), minlength=B + 1).double()
    P = max_positions
    pos_all = torch.cat([torch.arange(len(s)).clamp(max=P - 1) for s in seqs])
    n_pos = torch.bincount(pos_all, minlength=P).double()

    N = model.cfg.d_mlp
    L = len(layers)
    st = {
        "max": torch.full((L, N), -float("inf")),
        "min": torch.full((L, N), float("inf")),
        "fires": torch.zeros(L, N, dtype=torch.float64),
        "sum": torch.zeros(L, N, dtype=torch.float64),
        "sumsq": torch.zeros(L, N, dtype=torch.float64),
        "type_fires": torch.zeros(L, U + 1, N),
        "type_sum": torch.zeros(L, U + 1, N),
        "pos_sum": torch.zeros(L, P, N),
        "bigram_fires": torch.zeros(L, B + 1, N),
    }
    index = {layer: i for i, layer in enumerate(layers)}

    memo: dict = {}

    def indices(batch):
        """Token type, bigram type and position bucket of each real token: once per batch,
        not once per layer."""
        if memo.get("batch") is not batch:
            mask = batch.mask
            toks = batch.tokens[mask].cpu()
            prev = torch.cat([torch.full_like(batch.tokens[:, :1], -1), batch.tokens[:, :-1]], 1)[mask].cpu().long()
            bidx = bigram_type(torch.where(prev >= 0, prev * V + toks.long(), torch.full_like(prev, -1)))
            pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)[mask].cpu().clamp(max=P - 1)
            memo.update(batch=batch, idx=(type_of[toks], bidx, pos))
        return memo["idx"]

    def reduce(t: torch.Tensor, site, batch) -> None:
        li = index[site.layer]
        acts = t[batch.mask].detach().float().cpu()  # [M, N] real tokens only
        tidx, bidx, pos = indices(batch)
        fires = (acts.abs() > threshold).float()  # either sign: SiLU(gate)·up is signed
        st["max"][li] = torch.maximum(st["max"][li], acts.amax(0))
        st["min"][li] = torch.minimum(st["min"][li], acts.amin(0))
        st["fires"][li] += fires.sum(0, dtype=torch.float64)
        a64 = acts.double()
        st["sum"][li] += a64.sum(0)
        st["sumsq"][li] += (a64 * a64).sum(0)
        st["type_fires"][li].index_add_(0, tidx, fires)
        st["type_sum"][li].index_add_(0, tidx, acts)
        st["pos_sum"][li].index_add_(0, pos, acts)
        st["bigram_fires"][li].index_add_(0, bidx, fires)

    from mechscope.probes.capture import run

    run(model, seqs, reducers={hooknames.name("mlp_post", layer): reduce for layer in layers},
        batch_size=batch_size, progress=progress, desc="neuron activity")

    n = float(len(all_ids))
    S, SS = st["sum"], st["sumsq"]
    total = (SS - S * S / n).clamp(min=1e-12)

    def eta2(group_sum: torch.Tensor, group_n: torch.Tensor) -> torch.Tensor:
        between = (group_sum.double().pow(2) / group_n.clamp(min=1)[None, :, None]).sum(1) - S * S / n
        return (between / total).clamp(0, 1).float()

    eta_tok = eta2(st["type_sum"], n_type)
    eta_pos = eta2(st["pos_sum"], n_pos)
    tf = st["type_fires"][:, :U]  # [L, U, N], tracked types only
    k = min(n_top_types, U)
    top_cnt, top_t = torch.topk(tf, k, dim=1)  # [L, k, N]
    fires = st["fires"].float()
    share = top_cnt.sum(1) / fires.clamp(min=1)
    coverage = top_cnt[:, 0] / n_type[top_t[:, 0]].float()
    top_ids = torch.where(top_cnt > 0, tracked[top_t], torch.full_like(top_t, -1)).permute(0, 2, 1)
    dead = fires == 0
    detector = ~dead & (fires >= min_fires) & (share >= token_share) & (coverage >= min_coverage)
    positional = ~dead & ~detector & (eta_pos >= positional_r2) & (eta_pos >= positional_ratio * eta_tok)
    kb = min(n_top_types, B)
    if kb:
        bcnt, bt = torch.topk(st["bigram_fires"][:, :B], kb, dim=1)  # [L, kb, N]
        bshare = bcnt.sum(1) / fires.clamp(min=1)
        bcov = bcnt[:, 0] / n_bigram[bt[:, 0]].float()
        codes = bkeep[bt]  # [L, kb, N]
        cur_type = type_of[codes[:, 0] % V]  # the top pair's current token, as a tracked type (U: untracked)
        cur_fires = torch.gather(st["type_fires"], 1, cur_type[:, None, :]).squeeze(1)
        ucov = torch.where(cur_type < U, cur_fires / n_type[cur_type].float(), torch.ones_like(bcov))
        pairs = torch.stack([codes // V, codes % V], -1).permute(0, 2, 1, 3)  # [L, N, kb, 2]
        pairs = torch.where((bcnt > 0).permute(0, 2, 1)[..., None], pairs, torch.full_like(pairs, -1))
    else:
        bshare = bcov = torch.zeros(L, N)
        ucov = torch.ones(L, N)
        pairs = torch.full((L, N, 1, 2), -1, dtype=torch.long)
    ngram = (~dead & ~detector & (fires >= min_fires) & (bshare >= token_share) & (bcov >= min_coverage)
             & (ucov < min_coverage))
    category = torch.zeros(L, N, dtype=torch.int8)
    category[positional] = 3
    category[ngram] = 4
    category[detector] = 2
    category[dead] = 1
    return NeuronActivityResult(
        model_id=model_id(model),
        params=params,
        layers=layers, n_tokens=int(n), max_act=st["max"], min_act=st["min"], fire_rate=(fires / n),
        top_token_ids=top_ids.to(torch.int32), top_token_share=share, top_token_coverage=coverage,
        eta2_token=eta_tok, eta2_pos=eta_pos,
        pos_mean=(st["pos_sum"] / n_pos.clamp(min=1)[None, :, None]).permute(0, 2, 1).float(),
        category=category, vocab=vocab_strings(model),
        top_bigrams=pairs.to(torch.int32), bigram_share=bshare.float(), bigram_coverage=bcov.float(),
        unigram_coverage=ucov.float(),
    )
