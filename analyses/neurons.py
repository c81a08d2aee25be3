"""MLP neurons read through the unembedding, their activity, and clamp verification.

* :func:`decode_neurons` — every neuron of every layer pushed through the LM head (Davies et
  al. 2025, "Decoding specialised feature neurons in LLMs with the final projection layer",
  arXiv 2501.02688): top- and bottom-k tokens with their logits (optionally the softmax
  probability of the top token). Chunked: the [neurons × vocab] matrix never exists.
* :func:`neurons_for_token` — "which neurons most promote token / string X": one mat-vec over
  all neurons, milliseconds.
* :func:`neuron_activity` — streaming statistics over a text set and a taxonomy after Voita
  et al. 2023 ("Neurons in LLMs: Dead, N-gram, Positional"); :func:`max_activating` — the
  top contexts of one neuron.
* :func:`clamp_verification` — clamp a neuron through :class:`probes.interventions.NeuronClamp`
  and check that the probability of its decoded top token rises (the paper's verification).

**What is decoded.** A neuron n of layer l adds ``a_n · W_out[l][n]`` to the residual stream
(``a_n`` = ``blocks.l.mlp.hook_post``, for gated MLPs act(gate)·up). If nothing later cancels
it, the final RMSNorm turns the residual h into ``γ ⊙ h / rms(h)``, so the neuron's direct
effect on the logits is ``(a_n / rms(h)) · W_Uᵀ (γ ⊙ W_out[l][n])``. The division by rms(h) is
one positive scalar per position: it scales all of a neuron's logits alike and cannot change
their ranking, so ``norm="final"`` (default) decodes ``W_Uᵀ (γ ⊙ w)`` — γ, the final norm's
weight, is folded into the unembedding once. ``norm="raw"`` decodes ``W_Uᵀ w`` (LM head
alone, as LLM-Microscope and the paper's code apply it). The unembedding bias, if any, is
the same for every neuron and is left out. Top tokens are what the neuron promotes when its
activation is positive; SiLU-gated activations can also be negative, when it promotes the
bottom tokens.

**Two named methods** (every table and page says which one produced a label):

* ``method="paper"`` — the paper's (arXiv 2501.02688): the *up-projection* column of a
  neuron (``W_in[l][:, n]``, the direction it reads; for gated MLPs the "up" matrix, not the
  gate, because the paper decodes Llama's ``up_proj``) through the LM head alone, no norm,
  softmax over the vocabulary. The top token labels the neuron.
* ``method="write"`` — what the neuron *writes* (``W_out[l][n]``) through the unembedding
  with the final norm's γ folded in: the neuron's direct effect on the logits, and what a
  clamp acts through.

On SmolLM2-135M the two agree on the top-1 token for a small minority of neurons (measured
by :func:`method_agreement`), so a label must name its method. ``norm``/``direction`` remain
available for other combinations (``method="custom"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Literal, Sequence

import numpy as np
import pandas as pd
import torch

from probes import hooknames
from probes.errors import InputError, check_range
from probes.models import model_id as _model_id
from probes.results import Params, Result, analysis
from probes.tokens import text_ids

METHODS = {"paper": ("up", "raw"), "write": ("out", "final")}  # method -> (direction, norm)


def resolve_method(method: str, direction: str | None = None, norm: str | None = None) -> tuple[str, str]:
    """(direction, norm) of a named decoding method; ``custom`` takes them as given."""
    if method == "custom":
        return direction or "out", norm or "final"
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)} or 'custom', not {method!r}.")
    return METHODS[method]


def method_label(method: str, direction: str, norm: str) -> str:
    if method == "paper":
        return "paper (up-projection → LM head, no norm)"
    if method == "write":
        return "write (W_out → final norm γ → unembedding)"
    return f"custom ({direction} → {'final norm γ → ' if norm == 'final' else ''}unembedding)"

Norm = Literal["final", "raw"]
Direction = Literal["out", "up", "gate"]

# Used until probes.datasets lands (or when it is missing): short neutral mixed texts.
FALLBACK_TEXTS = [
    "The old house stood at the end of the lane, its windows dark and its garden overgrown.",
    "In 1905 Albert Einstein published four papers that changed physics forever.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "She opened the letter, read it twice, and then put it carefully back into the drawer.",
    "The recipe needs two cups of flour, one egg, a pinch of salt and some milk.",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)",
    "Rivers carry sediment from the mountains to the sea, building deltas over thousands of years.",
    "The committee will meet on Tuesday at 3 pm to discuss the budget for next year.",
    "My dog barks at the postman every morning, while the cat sleeps on the sofa.",
    "Prices rose by 3.5% in March, after a fall of 1.2% in February and 0.8% in January.",
    "He walked into the kitchen, poured a cup of coffee, and looked out at the rain.",
    "import numpy as np\nx = np.arange(12).reshape(3, 4)\nprint(x.sum(axis=0))",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Children played in the park until the sun went down behind the hills.",
    "1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987",
    "The library closes at eight, but the reading room stays open for members until ten.",
]


def resolve_texts(texts: str | Sequence) -> list:
    """A text set by name (``probes.datasets.load_texts``) or as a list of texts (or token-id
    sequences, for models without a tokenizer); never empty."""
    if isinstance(texts, str):
        try:
            from probes.datasets import load_texts  # the data helper's module
        except ImportError:
            out = list(FALLBACK_TEXTS)
        else:
            out = list(load_texts(texts))
    else:
        out = [t for t in texts if (t.strip() if isinstance(t, str) else len(t) > 0)]
    if not out:
        raise InputError("The text set is empty: give at least one non-empty text.")
    return out


# ---------------------------------------------------------------------------------------
# Directions and the decoding matrix


def _check_norm_direction(model, norm: str, direction: str) -> None:
    if norm not in ("final", "raw"):
        raise InputError(f"norm must be 'final' or 'raw', not {norm!r}.")
    if direction not in ("out", "up", "gate"):
        raise InputError(f"direction must be 'out', 'up' or 'gate', not {direction!r}.")
    if direction == "gate" and not model.cfg.gated_mlp:
        raise InputError("direction='gate' needs a gated MLP; this model's MLP is not gated.")


def neuron_directions(model, layer: int, direction: Direction = "out") -> torch.Tensor:
    """[d_mlp, d_model] float32: the vector each neuron of ``layer`` writes (``out``) or
    reads (``up`` = W_in column, ``gate`` = W_gate column)."""
    check_range("layer", layer, model.cfg.n_layers)
    blk = model.blocks[layer].mlp
    if direction == "out":
        w = blk.W_out
    elif direction == "up":
        w = blk.W_in.T
    else:
        w = blk.W_gate.T
    return w.detach().float()


def _gamma(model) -> torch.Tensor | None:
    w = getattr(getattr(model, "ln_final", None), "w", None)
    return None if w is None else w.detach().float()


def _layer_matvec(model, layer: int, direction: str, v: torch.Tensor) -> torch.Tensor:
    """[d_mlp]: every neuron direction of ``layer`` dotted with ``v`` (no copies)."""
    mlp = model.blocks[layer].mlp
    if direction == "out":
        return mlp.W_out.detach().float() @ v
    W = mlp.W_in if direction == "up" else mlp.W_gate
    return v @ W.detach().float()


def unembedding(model, norm: Norm = "final") -> torch.Tensor:
    """[d_model, d_vocab] float32: W_U, with the final norm's weight γ folded in for
    ``norm="final"`` (rows scaled by γ). Bias-free, see the module docstring."""
    W = model.W_U.detach().float()
    if norm == "final":
        ln = getattr(model, "ln_final", None)
        w = getattr(ln, "w", None)
        if w is not None:
            W = W * w.detach().float()[:, None]
    return W.contiguous()


def topk_both(logits: torch.Tensor, k: int, block: int = 64):
    """Top-``k`` (descending) and bottom-``k`` (ascending) of each row of ``logits``.

    Same values as two ``torch.topk`` calls, about 3× cheaper on CPU for long rows: rows are
    cut into blocks of ``block``; one max and one min per block (fast, vectorised
    reductions); the top-k entries of a row lie in its k blocks with the largest maxima (any
    entry outside them is beaten by those k maxima), so an exact top-k over those k·block
    candidates (plus the ragged tail) finishes the job. Ties may pick different ids of
    equal value.
    """
    n, V = logits.shape
    nb = V // block
    if nb <= k:  # short rows: nothing to gain
        tv, ti = torch.topk(logits, k, dim=1)
        bv, bi = torch.topk(logits, k, dim=1, largest=False)
        return tv, ti, bv, bi
    body = logits[:, : nb * block].view(n, nb, block) if logits.is_contiguous() else logits[:, : nb * block].reshape(n, nb, block)
    offs = torch.arange(block, device=logits.device)
    tail_ids = torch.arange(nb * block, V, device=logits.device).expand(n, -1)
    res = []
    for largest in (True, False):
        red = body.amax(2) if largest else body.amin(2)
        blocks = torch.topk(red, k, dim=1, largest=largest).indices  # [n, k]
        ids = (blocks[:, :, None] * block + offs).reshape(n, -1)
        if V > nb * block:
            ids = torch.cat([ids, tail_ids], dim=1)
        cand = torch.gather(logits, 1, ids)
        v, j = torch.topk(cand, k, dim=1, largest=largest)
        res += [v, torch.gather(ids, 1, j)]
    return res[0], res[1], res[2], res[3]


def decode_directions(
    directions: torch.Tensor,
    W: torch.Tensor,
    k: int = 10,
    chunk_size: int = 1024,
    softmax: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Top/bottom-``k`` of ``directions @ W`` row by row, in chunks of ``chunk_size`` rows.

    Returns ``top_ids``/``top_logits``/``bottom_ids``/``bottom_logits`` [n, k] (top
    descending, bottom ascending) and, with ``softmax=True``, ``top_prob`` [n] = the softmax
    probability of the top token (one exp over every logit: about +35% time on CPU). One
    [chunk, vocab] buffer is reused: peak extra memory ≈ chunk·vocab·4 bytes.
    """
    n, d = directions.shape
    V = W.shape[1]
    if not 1 <= k <= V:
        raise InputError(f"k must lie in 1..{V}.")
    dev, dt = W.device, W.dtype
    out = {
        "top_ids": torch.empty(n, k, dtype=torch.int32),
        "top_logits": torch.empty(n, k, dtype=torch.float32),
        "bottom_ids": torch.empty(n, k, dtype=torch.int32),
        "bottom_logits": torch.empty(n, k, dtype=torch.float32),
    }
    if softmax:
        out["top_prob"] = torch.empty(n, dtype=torch.float32)
    buf = torch.empty(min(chunk_size, n), V, dtype=dt, device=dev)
    with torch.no_grad():
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            logits = buf[: stop - start]
            torch.matmul(directions[start:stop].to(dev, dt), W, out=logits)
            tv, ti, bv, bi = topk_both(logits, k)
            out["top_ids"][start:stop] = ti.to(torch.int32).cpu()
            out["top_logits"][start:stop] = tv.float().cpu()
            out["bottom_ids"][start:stop] = bi.to(torch.int32).cpu()
            out["bottom_logits"][start:stop] = bv.float().cpu()
            if softmax:  # the buffer is scratch now: exp in place
                z = logits.sub_(tv[:, :1]).exp_().sum(dim=1, dtype=torch.float64)
                out["top_prob"][start:stop] = (1.0 / z).float().cpu()
            if progress is not None:
                progress(stop, n)
    return out


# ---------------------------------------------------------------------------------------
# Decoding every neuron


@dataclass(frozen=True)
class NeuronDecodeResult(Result):
    """Top/bottom-k decoded tokens of every MLP neuron: arrays are [n_layers, d_mlp, k]."""

    layers: list
    top_ids: torch.Tensor
    top_logits: torch.Tensor
    bottom_ids: torch.Tensor
    bottom_logits: torch.Tensor
    top_prob: torch.Tensor | None  # [n_layers, d_mlp] softmax p(top token), if asked for
    vocab: np.ndarray  # readable label of every token id (for search and tables offline)
    method: str = ""  # which decoding produced the labels (method_label)

    kind = "neuron_decode"

    def token(self, i: int) -> str:
        return str(self.vocab[int(i)])

    def card(self, layer: int, neuron: int) -> pd.DataFrame:
        """The decoded tokens of one neuron: rank, top token/logit, bottom token/logit."""
        li = self._layer_index(layer)
        check_range("neuron", neuron, self.top_ids.shape[1])
        k = self.top_ids.shape[2]
        return pd.DataFrame({
            "rank": np.arange(1, k + 1),
            "top_token": [self.token(i) for i in self.top_ids[li, neuron]],
            "top_logit": self.top_logits[li, neuron].numpy(),
            "bottom_token": [self.token(i) for i in self.bottom_ids[li, neuron]],
            "bottom_logit": self.bottom_logits[li, neuron].numpy(),
        })

    def _layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise InputError(f"layer {layer!r} was not decoded (decoded layers: {self.layers[0]}..{self.layers[-1]}).")
        return self.layers.index(layer)

    def search(self, token_id: int, top: int = 20) -> pd.DataFrame:
        """Neurons whose stored top-k contains ``token_id``, by that token's logit (offline
        search over the stored result; :func:`neurons_for_token` ranks all neurons exactly)."""
        check_range("token id", int(token_id), len(self.vocab))
        hit = self.top_ids == int(token_id)  # [L, N, k]
        li, ni, ri = torch.nonzero(hit, as_tuple=True)
        logits = self.top_logits[li, ni, ri]
        order = torch.argsort(logits, descending=True)[:top]
        return pd.DataFrame({
            "layer": [self.layers[int(i)] for i in li[order]],
            "neuron": ni[order].numpy(),
            "rank_in_neuron": (ri[order] + 1).numpy(),
            "logit": logits[order].numpy(),
            "top_tokens": [" | ".join(self.token(t) for t in self.top_ids[li[o], ni[o], :5]) for o in order],
        })

    def specialisation(self, by: str = "margin") -> torch.Tensor:
        """[n_layers, d_mlp] how much a neuron singles out its top token: ``margin`` = top-1
        minus top-2 logit (= log p1/p2 under the softmax), or ``prob`` = softmax p(top)."""
        if by == "prob":
            if self.top_prob is None:
                raise InputError("This result has no softmax probabilities: decode with softmax=True.")
            return self.top_prob
        if by != "margin":
            raise InputError(f"Specialisation is 'margin' or 'prob', not {by!r}.")
        return self.top_logits[:, :, 0] - self.top_logits[:, :, 1]

    def specialised(self, n: int = 20, min_layer: int | None = None, by: str = "margin") -> pd.DataFrame:
        """The ``n`` most specialised neurons (see :meth:`specialisation`)."""
        p = self.specialisation(by).clone()
        if min_layer is not None:
            for i, layer in enumerate(self.layers):
                if layer < min_layer:
                    p[i] = -1
        flat = torch.topk(p.reshape(-1), min(n, p.numel())).indices
        N = p.shape[1]
        rows = []
        for f in flat.tolist():
            li, ni = divmod(f, N)
            rows.append({"layer": self.layers[li], "neuron": ni, "top_token": self.token(self.top_ids[li, ni, 0]),
                         "top_id": int(self.top_ids[li, ni, 0]),
                         "margin": float(self.top_logits[li, ni, 0] - self.top_logits[li, ni, 1]),
                         "top_prob": float(self.top_prob[li, ni]) if self.top_prob is not None else float("nan")})
        return pd.DataFrame(rows)

    def to_frame(self) -> pd.DataFrame:
        """One row per neuron: its top-3 and bottom-3 tokens and top-token probability."""
        L, N, k = self.top_ids.shape
        top = self.top_ids[:, :, :3].reshape(L * N, -1).numpy()
        bot = self.bottom_ids[:, :, :3].reshape(L * N, -1).numpy()
        voc = self.vocab
        return pd.DataFrame({
            "layer": np.repeat(np.asarray(self.layers), N),
            "neuron": np.tile(np.arange(N), L),
            "margin": self.specialisation("margin").reshape(-1).numpy() if k > 1 else np.full(L * N, np.nan),
            "top_tokens": [" | ".join(str(voc[i]) for i in row) for row in top],
            "top_logit": self.top_logits[:, :, 0].reshape(-1).numpy(),
            "bottom_tokens": [" | ".join(str(voc[i]) for i in row) for row in bot],
            "method": self.method,
        })

    def figures(self) -> dict:
        import plotly.graph_objects as go

        by = "prob" if self.top_prob is not None else "margin"
        p = self.specialisation(by).numpy()
        fig = go.Figure()
        for q in (50, 90, 99):
            fig.add_trace(go.Scatter(x=self.layers, y=np.percentile(p, q, axis=1), mode="lines+markers", name=f"p{q}"))
        label = "softmax p(top token)" if by == "prob" else "top-1 − top-2 logit"
        fig.update_layout(title=f"How specialised neurons are, per layer: percentiles of {label} — {self.method}",
                          xaxis_title="layer", yaxis_title=label)
        return {"specialisation_by_layer": fig}


@dataclass(frozen=True)
class DecodeParams(Params):
    kind: ClassVar[str] = "neuron_decode"
    k: int = field(default=10, metadata={"help": "top and bottom tokens kept per neuron"})
    method: str = field(default="write", metadata={"help": "paper | write | custom (see the module docstring)"})
    norm: str | None = field(default=None, metadata={"help": "custom method: final | raw"})
    direction: str | None = field(default=None, metadata={"help": "custom method: out | up | gate"})
    layers: tuple[int, ...] | None = field(default=None, metadata={"help": "layers to decode (None: all)"})
    chunk_size: int = field(default=1024, metadata={"help": "neurons per matrix product"})
    softmax: bool = field(default=False, metadata={"help": "also the softmax probability of the top token"})

    def __post_init__(self):
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        if self.method != "custom" and (self.norm is not None or self.direction is not None):
            d, n = METHODS.get(self.method, (None, None))
            if (self.direction or d, self.norm or n) != (d, n):
                raise InputError("norm/direction can only be chosen with method='custom'.")


@analysis(DecodeParams)
def decode_neurons(model, params: DecodeParams, progress: Callable[[int, int], None] | bool = False) -> NeuronDecodeResult:
    """Decode every MLP neuron of ``layers`` (default all) through the unembedding, by the
    named ``method`` (module docstring).

    Cost: one chunked [neurons × d_model] × [d_model × vocab] product plus a top-k and
    bottom-k per row; float32 on the model's device.
    """
    k, layers, chunk_size, softmax = params.k, params.layers, params.chunk_size, params.softmax
    direction, norm = resolve_method(params.method, params.direction, params.norm)
    _check_norm_direction(model, norm, direction)
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    if not layers:
        raise InputError("No layers to decode.")
    for layer in layers:
        check_range("layer", layer, model.cfg.n_layers)
    if chunk_size < 1:
        raise InputError("chunk_size must be at least 1.")
    W = unembedding(model, norm)
    dirs = torch.cat([neuron_directions(model, layer, direction) for layer in layers])
    N = model.cfg.d_mlp
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(dirs), desc="decode neurons", leave=False)
        cb = lambda done, total: bar.update(done - bar.n)  # noqa: E731
    else:
        cb = progress or None
    out = decode_directions(dirs, W, k=k, chunk_size=chunk_size, softmax=softmax, progress=cb)
    if bar is not None:
        bar.close()
    L = len(layers)
    return NeuronDecodeResult(
        model_id=_model_id(model),
        params=params,
        method=method_label(params.method, direction, norm),
        layers=layers,
        top_ids=out["top_ids"].reshape(L, N, k),
        top_logits=out["top_logits"].reshape(L, N, k),
        bottom_ids=out["bottom_ids"].reshape(L, N, k),
        bottom_logits=out["bottom_logits"].reshape(L, N, k),
        top_prob=out["top_prob"].reshape(L, N) if softmax else None,
        vocab=_vocab(model),
    )


def method_agreement(model, layers: Sequence[int] | None = None, chunk_size: int = 1024) -> pd.DataFrame:
    """Per layer: the fraction of neurons whose top-1 token is the same under the paper's
    method and the write method (and over all layers, row ``layer == -1``)."""
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    rows, same_all, n_all = [], 0, 0
    for layer in layers:
        a = decode_neurons(model, k=1, method="paper", layers=(layer,), chunk_size=chunk_size).top_ids[0, :, 0]
        b = decode_neurons(model, k=1, method="write", layers=(layer,), chunk_size=chunk_size).top_ids[0, :, 0]
        same = int((a == b).sum())
        rows.append({"layer": layer, "neurons": len(a), "same_top1": same, "agreement": same / len(a)})
        same_all, n_all = same_all + same, n_all + len(a)
    rows.append({"layer": -1, "neurons": n_all, "same_top1": same_all, "agreement": same_all / max(n_all, 1)})
    return pd.DataFrame(rows)


def _vocab(model) -> np.ndarray:
    V = model.cfg.d_vocab
    tok = model.tokenizer
    if tok is None:
        return np.array([f"<{i}>" for i in range(V)], dtype=object)
    labels = tok.convert_ids_to_tokens(list(range(min(V, len(tok)))))
    out = []
    for i, lab in enumerate(labels):
        out.append(tok.convert_tokens_to_string([lab]) if lab is not None else f"<{i}>")
    out += [f"<{i}>" for i in range(len(out), V)]
    return np.array(out, dtype=object)


# ---------------------------------------------------------------------------------------
# Search: which neurons most promote token / string X


def token_ids_for(model, token: str | int) -> list[int]:
    """Token ids for a token id or a string (tokenised without BOS); clear errors."""
    if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
        check_range("token id", int(token), model.cfg.d_vocab)
        return [int(token)]
    if not isinstance(token, str) or token == "":
        raise InputError("Give a token: a non-empty string or a token id.")
    if token.strip().isdigit() and token.strip() == token and model.tokenizer is None:
        return token_ids_for(model, int(token))
    if model.tokenizer is None:
        raise InputError("This model has no tokenizer: give a token id.")
    ids = text_ids(model, token)
    if not ids:
        raise InputError(f"{token!r} tokenises to nothing: give another string.")
    unk = getattr(model.tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids:
        raise InputError(f"{token!r} contains text the tokenizer does not know.")
    return list(ids)


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
    _check_norm_direction(model, norm, direction)
    if top < 1:
        raise InputError("top must be at least 1.")
    ids = token_ids_for(model, token)
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    if not layers:
        raise InputError("No layers to search.")
    for layer in layers:
        check_range("layer", layer, model.cfg.n_layers)
    with torch.no_grad():
        WU = model.W_U.detach().float()
        g = _gamma(model) if norm == "final" else None
        col = WU[:, ids].mean(dim=1)
        if g is not None:
            col = col * g
        scores = torch.cat([_layer_matvec(model, layer, direction, col) for layer in layers])
        vals, idx = torch.topk(scores, min(top, len(scores)))
        N = model.cfg.d_mlp
        rows = torch.stack([neuron_directions(model, layers[int(i) // N], direction)[int(i) % N] for i in idx])
        full = (rows * g if g is not None else rows) @ WU  # [top, vocab]: ranks and top tokens of the hits
        tok_logit = full[:, ids].mean(dim=1, keepdim=True)
        ranks = (full > tok_logit).sum(dim=1) + 1
        tops = torch.topk(full, 5, dim=1).indices
    N = model.cfg.d_mlp
    from probes.tokens import str_tokens

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
    return NeuronSearchResult(model_id=_model_id(model), params=params, table=table, method=label)


# ---------------------------------------------------------------------------------------
# Activity over a text set: max-activating contexts and the Voita et al. taxonomy


def _encode_texts(model, texts: Sequence[str], max_tokens: int | None) -> list[torch.Tensor]:
    from probes.tokens import encode

    from probes.tokens import as_token_tensor

    seqs = []
    for t in texts:
        if isinstance(t, str):
            if not t.strip():
                continue
            ids = encode(model, t)
        else:
            ids = as_token_tensor(model, t)[0]
        seqs.append(ids[: max_tokens or None])
    if not seqs:
        raise InputError("The text set is empty: no text produced any tokens.")
    return seqs


def _context(model, ids: torch.Tensor, pos: int, window: int) -> str:
    from probes.tokens import str_tokens

    lo = max(0, pos - window)
    before = "".join(str_tokens(model, ids[lo:pos]))
    after = "".join(str_tokens(model, ids[pos + 1 : pos + 4]))
    tok = "".join(str_tokens(model, ids[pos : pos + 1]))
    return f"{'…' if lo > 0 else ''}{before}⟦{tok}⟧{after}"


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
class MaxActParams(Params):
    kind: ClassVar[str] = "max_activating"
    layer: int = field(default=0, metadata={"help": "layer"})
    neuron: int = field(default=0, metadata={"help": "neuron"})
    texts: object = field(default="mixed", metadata={"help": "shipped text set, or a list of texts"})
    k: int = field(default=10, metadata={"help": "contexts to keep"})
    window: int = field(default=12, metadata={"help": "tokens of context before the token"})
    max_tokens: int | None = field(default=256, metadata={"help": "first tokens of each text"})
    max_texts: int | None = field(default=None, metadata={"help": "texts to use (None: all)"})
    batch_size: int = field(default=8, metadata={"help": "texts per forward pass"})

    def __post_init__(self):
        if not isinstance(self.texts, str):
            object.__setattr__(self, "texts", tuple(self.texts))


@analysis(MaxActParams)
def max_activating(model, params: MaxActParams, progress=False) -> MaxActivatingResult:
    """Top-``k`` (text, position, activation) of one neuron over a text set, with ``window``
    tokens of context before the token (⟦marked⟧) and three after. Keeps one float per token."""
    layer, neuron, texts, k, window = params.layer, params.neuron, params.texts, params.k, params.window
    max_tokens, max_texts, batch_size = params.max_tokens, params.max_texts, params.batch_size
    check_range("layer", layer, model.cfg.n_layers)
    check_range("neuron", neuron, model.cfg.d_mlp)
    if k < 1 or window < 0:
        raise InputError("k must be at least 1 and window at least 0.")
    texts_list = resolve_texts(texts)[:max_texts]
    seqs = _encode_texts(model, texts_list, max_tokens)
    from probes.capture import run

    acts: list[torch.Tensor | None] = [None] * len(seqs)

    def reduce(t: torch.Tensor, name: str, batch) -> None:
        for b, (i, n) in enumerate(zip(batch.index, batch.lengths.tolist())):
            acts[i] = t[b, :n, neuron].detach().float().cpu()

    run(model, seqs, reducers={hooknames.name("mlp_post", layer): reduce}, batch_size=batch_size, progress=progress)
    flat = torch.cat(acts)  # type: ignore[arg-type]
    where = [(i, p) for i, a in enumerate(acts) for p in range(len(a))]  # type: ignore[arg-type]
    order = torch.topk(flat, min(k, len(flat))).indices.tolist()
    from probes.tokens import str_tokens

    rows = []
    for r, f in enumerate(order):
        i, p = where[f]
        rows.append({"rank": r + 1, "text": i, "pos": p, "token": str_tokens(model, seqs[i][p : p + 1])[0],
                     "activation": float(flat[f]), "context": _context(model, seqs[i], p, window)})
    return MaxActivatingResult(
        model_id=_model_id(model),
        params=params,
        layer=layer, neuron=neuron, contexts=pd.DataFrame(rows), activations=flat.numpy(),
    )


@dataclass(frozen=True)
class NeuronActivityResult(Result):
    """Per-neuron activity statistics over a text set and the Voita et al. taxonomy.

    Arrays are [n_layers, d_mlp]. ``category``: 0 = ordinary, 1 = dead, 2 = token detector,
    3 = positional (see :func:`neuron_activity` for the rules).
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

    kind = "neuron_activity"
    CATEGORIES = ("ordinary", "dead", "token detector", "positional")

    def counts(self) -> pd.DataFrame:
        """Per layer: how many neurons fall in each category."""
        rows = []
        for i, layer in enumerate(self.layers):
            c = torch.bincount(self.category[i].long(), minlength=4)
            rows.append({"layer": layer, **{name: int(c[j]) for j, name in enumerate(self.CATEGORIES)}})
        return pd.DataFrame(rows)

    def neurons(self, category: str) -> pd.DataFrame:
        if category not in self.CATEGORIES:
            raise InputError(f"Unknown category {category!r}: one of {', '.join(self.CATEGORIES)}.")
        c = self.CATEGORIES.index(category)
        li, ni = torch.nonzero(self.category == c, as_tuple=True)
        return pd.DataFrame({
            "layer": [self.layers[int(i)] for i in li], "neuron": ni.numpy(),
            "fire_rate": self.fire_rate[li, ni].numpy(), "max_act": self.max_act[li, ni].numpy(),
            "min_act": self.min_act[li, ni].numpy(),
            "top_tokens": [" | ".join(str(self.vocab[int(t)]) for t in self.top_token_ids[a, b] if t >= 0)
                           for a, b in zip(li.tolist(), ni.tolist())],
            "top_token_share": self.top_token_share[li, ni].numpy(),
            "eta2_pos": self.eta2_pos[li, ni].numpy(), "eta2_token": self.eta2_token[li, ni].numpy(),
        })

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
class ActivityParams(Params):
    kind: ClassVar[str] = "neuron_activity"
    texts: object = field(default="mixed", metadata={"help": "shipped text set, or a list of texts"})
    threshold: float = field(default=0.5, metadata={"help": "a neuron fires where |activation| exceeds this"})
    layers: tuple[int, ...] | None = field(default=None, metadata={"help": "layers (None: all)"})
    n_top_types: int = field(default=3, metadata={"help": "token types that may explain a detector"})
    token_share: float = field(default=0.8, metadata={"help": "share of firings from the top types"})
    min_coverage: float = field(default=0.5, metadata={"help": "fraction of the top type's occurrences it fires on"})
    min_fires: int = field(default=5, metadata={"help": "firings needed to call a detector"})
    positional_r2: float = field(default=0.5, metadata={"help": "η² of position for a positional neuron"})
    positional_ratio: float = field(default=2.0, metadata={"help": "η²(position) / η²(token) for a positional neuron"})
    max_types: int = field(default=512, metadata={"help": "most frequent token types told apart"})
    max_positions: int = field(default=128, metadata={"help": "position buckets"})
    max_tokens: int | None = field(default=256, metadata={"help": "first tokens of each text"})
    max_texts: int | None = field(default=None, metadata={"help": "texts to use (None: all)"})
    batch_size: int = field(default=8, metadata={"help": "texts per forward pass"})

    def __post_init__(self):
        if not isinstance(self.texts, str):
            object.__setattr__(self, "texts", tuple(self.texts))
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

    State is O(layers × neurons × (types + positions)), never the activations themselves.
    Unigram token detectors only: n-gram detectors are not separated here.
    """
    p = params
    texts, threshold, layers, n_top_types, token_share = p.texts, p.threshold, p.layers, p.n_top_types, p.token_share
    min_coverage, min_fires, positional_r2, positional_ratio = p.min_coverage, p.min_fires, p.positional_r2, p.positional_ratio
    max_types, max_positions, max_tokens, max_texts, batch_size = p.max_types, p.max_positions, p.max_tokens, p.max_texts, p.batch_size
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    for layer in layers:
        check_range("layer", layer, model.cfg.n_layers)
    if max_positions < 2 or max_types < 1 or n_top_types < 1:
        raise InputError("max_positions must be ≥ 2 and max_types, n_top_types ≥ 1.")
    texts_list = resolve_texts(texts)[:max_texts]
    seqs = _encode_texts(model, texts_list, max_tokens)
    all_ids = torch.cat(seqs)
    uniq, freq = torch.unique(all_ids, return_counts=True)
    keep = torch.argsort(freq, descending=True)[:max_types]
    tracked = uniq[keep]
    U = len(tracked)
    type_of = torch.full((model.cfg.d_vocab,), U, dtype=torch.long)  # U = the "other" bucket
    type_of[tracked] = torch.arange(U)
    n_type = torch.bincount(type_of[all_ids], minlength=U + 1).double()
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
    }
    index = {layer: i for i, layer in enumerate(layers)}

    def reduce(t: torch.Tensor, site, batch) -> None:
        li = index[site.layer]
        mask = batch.mask
        acts = t[mask].detach().float().cpu()  # [M, N] real tokens only
        toks = batch.tokens[mask].cpu()
        pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)[mask].cpu().clamp(max=P - 1)
        tidx = type_of[toks]
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

    from probes.capture import run

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
    category = torch.zeros(L, N, dtype=torch.int8)
    category[positional] = 3
    category[detector] = 2
    category[dead] = 1
    return NeuronActivityResult(
        model_id=_model_id(model),
        params=params,
        layers=layers, n_tokens=int(n), max_act=st["max"], min_act=st["min"], fire_rate=(fires / n),
        top_token_ids=top_ids.to(torch.int32), top_token_share=share, top_token_coverage=coverage,
        eta2_token=eta_tok, eta2_pos=eta_pos,
        pos_mean=(st["pos_sum"] / n_pos.clamp(min=1)[None, :, None]).permute(0, 2, 1).float(),
        category=category, vocab=_vocab(model),
    )


# ---------------------------------------------------------------------------------------
# Clamp verification (Davies et al. 2025): clamping a neuron raises p(its top token)

NEUTRAL_PROMPTS = [
    "The",
    "I think that",
    "Here is a short story:",
    "Yesterday we",
    "It is important to",
    "She said that the",
    "In the morning",
    "This is a",
]


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
    from probes.capture import run
    from probes.interventions import NeuronClamp

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
    from analyses.act import bootstrap_ci

    over = table["over_control"].to_numpy()
    ci = bootstrap_ci(over, seed=p.seed) if len(over) > 1 else (float(over[0]), float(over[0]))
    return ClampVerificationResult(
        model_id=_model_id(model), params=params, table=table,
        fraction_up=float((table["delta_p"] > p.min_delta_p).mean()),
        median_delta=float(table["delta_p"].median()), pair_fraction_up=pair_up / (len(pairs) * len(prompts)),
        effect_over_control=float(over.mean()), effect_ci=tuple(ci),
        method=method_label(p.method, direction, norm),
    )


def str_token(model, i: int) -> str:
    from probes.tokens import str_tokens

    return str_tokens(model, [int(i)])[0]
