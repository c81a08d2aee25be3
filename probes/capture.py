"""Hooked runs over many sequences, capturing or *reducing* activations layer by layer.

Two ways to look at activations:

* ``capture=[hook names]`` keeps those tensors (per sequence, trimmed to its length, on CPU);
* ``reducers={hook name: fn}`` hands each batch's tensor to ``fn(tensor, hook_name, batch)``
  inside the hook and keeps nothing: the callback folds it into whatever small state it
  owns. This is how an analysis reads every layer's T×T attention without ever holding more
  than one layer's pattern.

Ragged batches are right-padded. For a causal model that needs no attention mask: a real
token at position i only sees positions ≤ i, all of them real, and rotary/absolute
positions start at 0 for every row. Padded positions produce junk that callbacks must
ignore — ``Batch.mask`` says which positions are real. Sequences are grouped by length to
keep padding small, and the forward pass stops after the last layer anyone asked about.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from mechscope.probes.errors import InputError
from mechscope.probes.hooknames import Site, site
from mechscope.probes.interventions import Intervention, applied
from mechscope.probes.tokens import as_token_tensor, check_length

ProgressFn = Callable[[int, int], None]


@dataclass
class Batch:
    """One padded batch. ``index[b]`` is the position of row b in the caller's input list."""

    tokens: torch.Tensor  # [B, T] long, right-padded with pad_id
    lengths: torch.Tensor  # [B]
    index: list[int]
    q_offset: int = 0  # absolute position of the first query (non-zero under a KV cache)
    step: int | None = None  # the decoding step (generation only; None for the prompt)
    host_lengths: tuple[int, ...] | None = None  # ``lengths`` as Python ints (no device sync to read)

    @functools.cached_property
    def mask(self) -> torch.Tensor:
        """[B, T] bool, True on real tokens (made once per batch and shared by every hook:
        clone it before changing it)."""
        t = self.tokens.shape[1]
        return torch.arange(t, device=self.lengths.device)[None, :] < self.lengths[:, None]

    def lengths_list(self) -> list[int]:
        """The real lengths as ints: from ``host_lengths`` when known, else read from the
        device (a sync on a GPU)."""
        return list(self.host_lengths) if self.host_lengths is not None else [int(n) for n in self.lengths.tolist()]


Reducer = Callable[[torch.Tensor, Site, Batch], None]  # site: the hook name, with .layer and .point


@dataclass
class CaptureOutput:
    activations: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    logits: list[torch.Tensor] | None = None  # per sequence [T, d_vocab], if asked for


def run_with_cache(model, inputs, names: Sequence[str] | Callable[[str], bool] | None = None,
                   interventions: Sequence[Intervention] = (), **kwargs):
    """One hooked forward pass: ``(logits, cache)`` with TransformerLens's ``ActivationCache``
    (``cache["resid_post", 5]``, ``cache["pattern", 3]``), under the model's lock and with the
    ``interventions`` applied; ``names`` (hook names or a filter) limits what is kept."""
    tokens = as_token_tensor(model, inputs)
    names_filter = list(names) if names is not None and not callable(names) else names
    with applied(model, interventions):
        return model.run_with_cache(tokens, names_filter=names_filter, **kwargs)


def _stop_layer(model, names: Sequence[str]) -> int | None:
    """The smallest stop_at_layer that still runs every requested hook (None: run all)."""
    layers = []
    for n in names:
        layer = site(n).layer
        if layer is None:
            return None
        layers.append(layer)
    top = max(layers) + 1
    return None if top >= model.cfg.n_layers else top


def _as_sequences(model, sequences) -> list[torch.Tensor]:
    if isinstance(sequences, torch.Tensor):
        sequences = list(sequences) if sequences.ndim == 2 else [sequences]
    out = []
    for s in sequences:
        t = as_token_tensor(model, s)[0]
        out.append(t)
    if not out:
        raise InputError("No input sequences were given.")
    return out


def run(
    model,
    sequences,
    *,
    capture: Sequence[str] = (),
    reducers: Mapping[str, Reducer] | None = None,
    batch_size: int = 8,
    return_logits: bool = False,
    interventions: Sequence[Intervention] = (),
    progress: bool | ProgressFn = False,
    desc: str = "forward",
) -> CaptureOutput:
    """Run ``model`` over ``sequences`` (texts, id lists or a [N, T] tensor).

    Returns the captured activations and logits, in input order. Reductions happen in the
    callbacks, which are called once per hook point per batch, in layer order.
    """
    reducers = dict(reducers or {})
    names = list(dict.fromkeys(list(capture) + list(reducers)))
    unknown = [n for n in names if n not in model.hook_dict]
    if unknown:
        raise InputError(f"Unknown hook point {unknown[0]!r} (see model.hook_dict for valid names).")
    if batch_size < 1:
        raise InputError("batch_size must be at least 1.")
    seqs = _as_sequences(model, sequences)
    for s in seqs:
        check_length(len(s), model.cfg.n_ctx)

    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    out = CaptureOutput(activations={n: [None] * len(seqs) for n in capture})  # type: ignore[list-item]
    logits_out: list[torch.Tensor | None] = [None] * len(seqs) if return_logits else []
    stop = None if return_logits or not names else _stop_layer(model, names)
    pad_id = 0
    device = model.cfg.device

    state: dict[str, Batch] = {}

    def make_hook(name: str):
        reducer = reducers.get(name)
        where = site(name)
        keep = name in out.activations

        def hook(tensor: torch.Tensor, hook) -> None:
            batch = state["batch"]
            if reducer is not None:
                reducer(tensor, where, batch)
            if keep:
                store = out.activations[name]
                for b, (i, n) in enumerate(zip(batch.index, batch.lengths_list())):
                    store[i] = _trim(tensor[b], n, name).detach().to("cpu", copy=True)
            return None

        return hook

    hooks = [(n, make_hook(n)) for n in names]
    bar = tqdm(total=len(seqs), desc=desc, disable=progress is not True, leave=False)
    done = 0
    with applied(model, interventions, extra_hooks=hooks), torch.no_grad():
        for idx in batches:
            lens = torch.tensor([len(seqs[i]) for i in idx])
            tokens = torch.full((len(idx), int(lens.max())), pad_id, dtype=torch.long)
            for b, i in enumerate(idx):
                tokens[b, : lens[b]] = seqs[i]
            tokens = tokens.to(device)
            state["batch"] = Batch(tokens, lens.to(device), idx, host_lengths=tuple(lens.tolist()))
            result = model(tokens, stop_at_layer=stop, return_type="logits" if return_logits else None)
            if return_logits:
                for b, i in enumerate(idx):
                    logits_out[i] = result[b, : lens[b]].to("cpu")
            done += len(idx)
            bar.update(len(idx))
            if callable(progress):
                progress(done, len(seqs))
    bar.close()
    if return_logits:
        out.logits = logits_out  # type: ignore[assignment]
    return out


_ATTN_SUFFIXES = ("hook_pattern", "hook_attn_scores")


def _trim(t: torch.Tensor, n: int, name: str) -> torch.Tensor:
    """Cut a per-sequence activation to its real length on every position axis: both
    trailing axes of attention [head, q, k] tensors, the leading axis of everything else."""
    if name.endswith(_ATTN_SUFFIXES):
        return t[:, :n, :n]
    return t[:n]
