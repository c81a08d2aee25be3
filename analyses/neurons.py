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

**The paper's up-projection variant.** For gated MLPs (Llama) the paper decodes the rows of
the *up-projection* — the direction a neuron *reads* from the residual stream — through the
LM head. ``direction="up"`` (``W_in[l][:, n]``) and ``direction="gate"`` do that here. The
default ``direction="out"`` decodes what the neuron *writes* (``W_out[l][n]``), which is what
clamping the neuron acts through; the two agree for neurons whose read and write directions
are aligned, which is the paper's premise for labelling a neuron by its up-projection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
import pandas as pd
import torch

from probes.errors import InputError, check_range
from probes.results import Result

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
        L, N, _ = self.top_ids.shape
        top = self.top_ids[:, :, :3].reshape(-1, 3).numpy()
        bot = self.bottom_ids[:, :, :3].reshape(-1, 3).numpy()
        voc = self.vocab
        return pd.DataFrame({
            "layer": np.repeat(np.asarray(self.layers), N),
            "neuron": np.tile(np.arange(N), L),
            "margin": self.specialisation("margin").reshape(-1).numpy(),
            "top_tokens": [" | ".join(str(voc[i]) for i in row) for row in top],
            "top_logit": self.top_logits[:, :, 0].reshape(-1).numpy(),
            "bottom_tokens": [" | ".join(str(voc[i]) for i in row) for row in bot],
        })

    def figures(self) -> dict:
        import plotly.graph_objects as go

        by = "prob" if self.top_prob is not None else "margin"
        p = self.specialisation(by).numpy()
        fig = go.Figure()
        for q in (50, 90, 99):
            fig.add_trace(go.Scatter(x=self.layers, y=np.percentile(p, q, axis=1), mode="lines+markers", name=f"p{q}"))
        label = "softmax p(top token)" if by == "prob" else "top-1 − top-2 logit"
        fig.update_layout(title=f"How specialised neurons are, per layer: percentiles of {label}",
                          xaxis_title="layer", yaxis_title=label)
        return {"specialisation_by_layer": fig}


def decode_neurons(
    model,
    k: int = 10,
    norm: Norm = "final",
    direction: Direction = "out",
    layers: Sequence[int] | None = None,
    chunk_size: int = 1024,
    softmax: bool = False,
    progress: Callable[[int, int], None] | bool = False,
) -> NeuronDecodeResult:
    """Decode every MLP neuron of ``layers`` (default all) through the unembedding.

    See the module docstring for what is decoded. Cost: one chunked [neurons × d_model] ×
    [d_model × vocab] product plus a top-k and bottom-k per row; float32 on the model's
    device.
    """
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
        params={"k": k, "norm": norm, "direction": direction, "layers": layers, "softmax": softmax},
        layers=layers,
        top_ids=out["top_ids"].reshape(L, N, k),
        top_logits=out["top_logits"].reshape(L, N, k),
        bottom_ids=out["bottom_ids"].reshape(L, N, k),
        bottom_logits=out["bottom_logits"].reshape(L, N, k),
        top_prob=out["top_prob"].reshape(L, N) if softmax else None,
        vocab=_vocab(model),
    )


def _model_id(model) -> str:
    spec = getattr(model, "mechscope_spec", None)
    return spec.name if spec is not None else str(getattr(model.cfg, "model_name", "custom"))


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
    ids = model.tokenizer(token, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError(f"{token!r} tokenises to nothing: give another string.")
    unk = getattr(model.tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids:
        raise InputError(f"{token!r} contains text the tokenizer does not know.")
    return list(ids)


def neurons_for_token(
    model,
    token: str | int,
    top: int = 20,
    norm: Norm = "final",
    direction: Direction = "out",
    layers: Sequence[int] | None = None,
) -> pd.DataFrame:
    """The ``top`` neurons with the largest decoded logit for ``token``.

    Exact over all neurons: the column ``W_U[:, t]`` (γ folded in) times every neuron's
    direction — one [neurons × d_model] mat-vec. A string that tokenises into several tokens
    is scored by the mean logit over its tokens. Each row also gives the token's rank in
    that neuron's full decoded vocabulary (1 = the neuron's top token) and the neuron's top
    tokens.
    """
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

    return pd.DataFrame({
        "layer": [layers[int(i) // N] for i in idx],
        "neuron": [int(i) % N for i in idx],
        "logit": vals.numpy(),
        "rank_of_token": ranks.numpy(),
        "top_tokens": [" | ".join(str_tokens(model, row)) for row in tops],
        "query_tokens": [" | ".join(str_tokens(model, ids))] * len(idx),
    })


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


def max_activating(
    model,
    layer: int,
    neuron: int,
    texts: str | Sequence[str] = "mixed",
    k: int = 10,
    window: int = 12,
    max_tokens: int | None = 256,
    max_texts: int | None = None,
    batch_size: int = 8,
    progress=False,
) -> MaxActivatingResult:
    """Top-``k`` (text, position, activation) of one neuron over a text set, with ``window``
    tokens of context before the token (⟦marked⟧) and three after. Keeps one float per token."""
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

    run(model, seqs, reducers={f"blocks.{layer}.mlp.hook_post": reduce}, batch_size=batch_size, progress=progress)
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
        params={"layer": layer, "neuron": neuron, "k": k, "window": window, "max_tokens": max_tokens,
                "n_texts": len(seqs), "texts": texts if isinstance(texts, str) else None, "max_texts": max_texts},
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
    fire_rate: torch.Tensor  # fraction of tokens with activation > threshold
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
                          f"(threshold {self.params['threshold']:g})", xaxis_title="layer", yaxis_title="neurons")
        return {"taxonomy_by_layer": fig}


def neuron_activity(
    model,
    texts: str | Sequence[str] = "mixed",
    threshold: float = 0.5,
    layers: Sequence[int] | None = None,
    n_top_types: int = 3,
    token_share: float = 0.8,
    min_coverage: float = 0.5,
    min_fires: int = 5,
    positional_r2: float = 0.5,
    positional_ratio: float = 2.0,
    max_types: int = 512,
    max_positions: int = 128,
    max_tokens: int | None = 256,
    max_texts: int | None = None,
    batch_size: int = 8,
    progress=False,
) -> NeuronActivityResult:
    """Streaming activity statistics and a taxonomy after Voita et al. 2023.

    A neuron *fires* on a token when its ``mlp.hook_post`` activation exceeds ``threshold``.
    Voita et al. study ReLU models, where "activates" means > 0; a SiLU-gated activation
    silu(gate)·up is almost never exactly 0, so a small positive threshold stands in for it
    (default 0.5; it is a parameter because activation scales differ between models and
    layers).

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
        "fires": torch.zeros(L, N, dtype=torch.float64),
        "sum": torch.zeros(L, N, dtype=torch.float64),
        "sumsq": torch.zeros(L, N, dtype=torch.float64),
        "type_fires": torch.zeros(L, U + 1, N),
        "type_sum": torch.zeros(L, U + 1, N),
        "pos_sum": torch.zeros(L, P, N),
    }
    index = {layer: i for i, layer in enumerate(layers)}

    def reduce(t: torch.Tensor, name: str, batch) -> None:
        li = index[int(name.split(".")[1])]
        mask = batch.mask
        acts = t[mask].detach().float().cpu()  # [M, N] real tokens only
        toks = batch.tokens[mask].cpu()
        pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)[mask].cpu().clamp(max=P - 1)
        tidx = type_of[toks]
        fires = (acts > threshold).float()
        st["max"][li] = torch.maximum(st["max"][li], acts.amax(0))
        st["fires"][li] += fires.sum(0, dtype=torch.float64)
        a64 = acts.double()
        st["sum"][li] += a64.sum(0)
        st["sumsq"][li] += (a64 * a64).sum(0)
        st["type_fires"][li].index_add_(0, tidx, fires)
        st["type_sum"][li].index_add_(0, tidx, acts)
        st["pos_sum"][li].index_add_(0, pos, acts)

    from probes.capture import run

    run(model, seqs, reducers={f"blocks.{layer}.mlp.hook_post": reduce for layer in layers},
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
        params={"texts": texts if isinstance(texts, str) else None, "n_texts": len(seqs), "threshold": threshold,
                "layers": layers, "n_top_types": n_top_types, "token_share": token_share,
                "min_coverage": min_coverage, "min_fires": min_fires, "positional_r2": positional_r2,
                "positional_ratio": positional_ratio, "max_types": max_types, "max_positions": max_positions,
                "max_tokens": max_tokens, "max_texts": max_texts},
        layers=layers, n_tokens=int(n), max_act=st["max"], fire_rate=(fires / n),
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
    """Per neuron: clamp value, mean p(top token) before/after over the prompts, and Δ."""

    table: pd.DataFrame
    fraction_up: float  # neurons whose mean Δp > 0
    median_delta: float  # median over neurons of the mean Δp
    pair_fraction_up: float  # (neuron, prompt) pairs with Δp > 0

    kind = "clamp_verification"

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def figures(self) -> dict:
        import plotly.graph_objects as go

        t = self.table
        labels = [f"L{a}N{b} {c!r}" for a, b, c in zip(t["layer"], t["neuron"], t["top_token"])]
        fig = go.Figure(go.Bar(x=labels, y=t["delta_p"]))
        fig.update_layout(title=f"Δ p(decoded top token) when clamped: {100 * self.fraction_up:.0f}% up, "
                          f"median Δ {self.median_delta:.3g}", xaxis_title="neuron", yaxis_title="Δp (mean over prompts)")
        return {"clamp_delta": fig}


def clamp_verification(
    model,
    decoded: NeuronDecodeResult | None = None,
    n: int = 20,
    neurons: Sequence[tuple[int, int]] | None = None,
    prompts: Sequence[str] = tuple(NEUTRAL_PROMPTS),
    value: float | None = None,
    factor: float = 10.0,
    min_value: float = 5.0,
    by: str = "margin",
    min_layer: int | None = None,
) -> ClampVerificationResult:
    """Clamp each of the ``n`` most specialised neurons of ``decoded`` (or the given
    ``(layer, neuron)`` pairs) at every position and measure, at the last position of each
    neutral prompt, the change in probability of the neuron's decoded top token.

    The clamp value is ``value`` if given, else ``max(min_value, factor × the neuron's
    largest |activation| on the prompts)`` — a large value, as the paper clamps. Returns the
    fraction of neurons whose mean Δp > 0 and the median mean Δp.
    """
    from probes.capture import run
    from probes.interventions import NeuronClamp

    prompts = [p for p in prompts if (p.strip() if isinstance(p, str) else len(p) > 0)]
    if not prompts:
        raise InputError("No prompts given for the clamp verification.")
    if neurons is None:
        if decoded is None:
            decoded = decode_neurons(model, k=2, layers=None if min_layer is None else range(min_layer, model.cfg.n_layers))
        spec = decoded.specialised(n, min_layer=min_layer, by=by)
        pairs = list(zip(spec["layer"].tolist(), spec["neuron"].tolist()))
        targets = spec["top_id"].tolist()
    else:
        pairs = [(int(a), int(b)) for a, b in neurons]
        for a, b in pairs:
            check_range("layer", a, model.cfg.n_layers)
            check_range("neuron", b, model.cfg.d_mlp)
        W = unembedding(model, "final")
        targets = [int(torch.argmax(neuron_directions(model, a)[b] @ W)) for a, b in pairs]
    if not pairs:
        raise InputError("No neurons to verify.")
    layers = sorted({a for a, _ in pairs})
    peak: dict[int, torch.Tensor] = {}

    def reduce(t, name, batch):
        li = int(name.split(".")[1])
        a = t[batch.mask].detach().abs().amax(0).float().cpu()
        peak[li] = torch.maximum(peak.get(li, a), a)

    base = run(model, prompts, reducers={f"blocks.{a}.mlp.hook_post": reduce for a in layers},
               return_logits=True, batch_size=len(prompts))
    p0 = torch.stack([torch.softmax(lg[-1].float(), -1) for lg in base.logits])  # [P, V]
    rows = []
    pair_up = 0
    for (layer, neuron), tgt in zip(pairs, targets):
        v = float(value) if value is not None else max(min_value, factor * float(peak[layer][neuron]))
        out = run(model, prompts, return_logits=True, batch_size=len(prompts),
                  interventions=[NeuronClamp(layer, neuron, value=v)])
        p1 = torch.stack([torch.softmax(lg[-1].float(), -1) for lg in out.logits])
        d = p1[:, tgt] - p0[:, tgt]
        pair_up += int((d > 0).sum())
        rows.append({"layer": layer, "neuron": neuron, "top_token": str_token(model, tgt), "top_id": tgt,
                     "clamp_value": v, "p_before": float(p0[:, tgt].mean()), "p_after": float(p1[:, tgt].mean()),
                     "delta_p": float(d.mean()), "prompts_up": float((d > 0).float().mean()),
                     "top1_after": float((p1.argmax(-1) == tgt).float().mean())})
    table = pd.DataFrame(rows)
    return ClampVerificationResult(
        model_id=_model_id(model),
        params={"n": len(pairs), "prompts": list(prompts), "value": value, "factor": factor, "min_value": min_value,
                "by": by, "min_layer": min_layer},
        table=table, fraction_up=float((table["delta_p"] > 0).mean()),
        median_delta=float(table["delta_p"].median()), pair_fraction_up=pair_up / (len(pairs) * len(prompts)),
    )


def str_token(model, i: int) -> str:
    from probes.tokens import str_tokens

    return str_tokens(model, [int(i)])[0]
