"""A prompt as analyses take it: text (under the model's BOS policy) or token ids, and the
default prompt of the one-prompt views."""

from __future__ import annotations

from dataclasses import field

import torch

from mechscope.probes.errors import InputError
from mechscope.probes.tokens import encode

DEFAULT_PROMPT = "The capital of France is"


def _prompt_field(default: str = DEFAULT_PROMPT):
    return field(default=default, metadata={"help": "the text (or token ids) to read"})


def normalise_prompt(obj) -> None:
    """Store a prompt given as a list of ids as a tuple (frozen, hashable, saved as data)."""
    if not isinstance(obj.prompt, str):
        object.__setattr__(obj, "prompt", tuple(int(i) for i in torch.as_tensor(obj.prompt).reshape(-1).tolist()))


def prompt_ids(model, prompt, prepend_bos: bool | None = None) -> torch.Tensor:
    """1-D token ids of ``prompt`` (text under the model's BOS policy, or ids as given)."""
    if isinstance(prompt, str):
        return encode(model, prompt, prepend_bos=prepend_bos)
    ids = torch.as_tensor(prompt, dtype=torch.long).reshape(-1)
    if ids.numel() == 0:
        raise InputError("The prompt is empty: enter some text.")
    return ids
