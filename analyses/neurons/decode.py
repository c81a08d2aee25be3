"""Every MLP neuron read through the unembedding (Davies et al. 2025, arXiv 2501.02688), by a
named method; the agreement between the two methods."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import numpy as np
import pandas as pd
import torch

from mechscope.analyses.neurons.common import (
    METHODS,
    check_norm_direction,
    method_label,
    neuron_directions,
    resolve_method,
)
from mechscope.probes.errors import InputError, check_range
from mechscope.probes.models import model_id
from mechscope.probes.readout import decode_directions, unembedding
from mechscope.probes.results import Params, Result, analysis
from mechscope.probes.tokens import vocab_strings


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


CACHE_FORMAT = 1  # bump when what decode_directions returns changes


def _cache_path(dirs: torch.Tensor, W: torch.Tensor, k: int, softmax: bool):
    """Where the decoding of ``dirs`` through ``W`` is kept: a file under $MECHSCOPE_CACHE named
    by the sha256 of both matrices' bytes, k and softmax (None when caching is off)."""
    import hashlib
    import json

    from mechscope.probes.weights_cache import cache_root

    root = cache_root()
    if root is None:
        return None
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "k": k, "softmax": softmax}).encode())
    for t in (dirs, W):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy() if t.dtype == torch.bfloat16 else t.numpy())
    return root / "neuron_decode" / f"{h.hexdigest()[:40]}.safetensors"


@contextlib.contextmanager
def _computing(path):
    """An exclusive lock on ``path``'s ``.lock`` file while held (POSIX ``flock``; no lock when
    caching is off, the folder cannot be written or the platform has no flock)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        fcntl = None
    if path is None or fcntl is None:
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path.with_suffix(".lock"), "a")
    except OSError:
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cached(path) -> dict | None:
    """The stored decoding at ``path``, or None (absent or unreadable: then it is recomputed)."""
    if path is None or not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception:  # noqa: BLE001 - a damaged cache file is a miss
        return None


def _store(path, out: dict) -> None:
    """Write ``out`` to ``path`` atomically; a cache that cannot be written is skipped."""
    if path is None:
        return
    import os
    import tempfile

    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        save_file({n: t.contiguous() for n, t in out.items()}, tmp)
        os.replace(tmp, path)
    except OSError:
        return


@analysis(DecodeParams)
def decode_neurons(model, params: DecodeParams, progress: Callable[[int, int], None] | bool = False,
                   cache: bool = True) -> NeuronDecodeResult:
    """Decode every MLP neuron of ``layers`` (default all) through the unembedding, by the
    named ``method`` (module docstring).

    Cost: one chunked [neurons × d_model] × [d_model × vocab] product plus a top-k and
    bottom-k per row; float32 on the model's device (about 50 s for SmolLM2's 46,080 neurons on
    2 CPU cores). ``cache``: keep the decoding under ``$MECHSCOPE_CACHE/neuron_decode``, keyed
    by the sha256 of the neuron directions and unembedding it was computed from, so a later
    call on the same weights reads it instead (``MECHSCOPE_CACHE=off`` disables it).
    """
    k, layers, chunk_size, softmax = params.k, params.layers, params.chunk_size, params.softmax
    direction, norm = resolve_method(params.method, params.direction, params.norm)
    check_norm_direction(model, norm, direction)
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
    path = _cache_path(dirs, W, k, softmax) if cache else None
    with _computing(path):  # another process decoding the same weights: wait, then read its file
        out = _cached(path)
        if out is None:
            out = decode_directions(dirs, W, k=k, chunk_size=chunk_size, softmax=softmax, progress=cb)
            _store(path, out)
    if bar is not None:
        bar.close()
    L = len(layers)
    return NeuronDecodeResult(
        model_id=model_id(model),
        params=params,
        method=method_label(params.method, direction, norm),
        layers=layers,
        top_ids=out["top_ids"].reshape(L, N, k),
        top_logits=out["top_logits"].reshape(L, N, k),
        bottom_ids=out["bottom_ids"].reshape(L, N, k),
        bottom_logits=out["bottom_logits"].reshape(L, N, k),
        top_prob=out["top_prob"].reshape(L, N) if softmax else None,
        vocab=vocab_strings(model),
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
