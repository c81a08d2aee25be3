"""Tokenisation with an explicit BOS policy and input checks."""

from __future__ import annotations

import torch

from mechscope.probes.errors import InputError, check_range


def spec_of(model):
    """The ModelSpec attached by ``probes.models.load`` (None for hand-built models)."""
    return getattr(model, "mechscope_spec", None)


def bos_id(model) -> int | None:
    spec = spec_of(model)
    tok = model.tokenizer
    if tok is None:
        return None
    if spec is not None and spec.bos_token is not None:
        return tok.convert_tokens_to_ids(spec.bos_token)
    return tok.bos_token_id


def default_prepend_bos(model) -> bool:
    spec = spec_of(model)
    return spec.prepend_bos if spec is not None else bool(model.cfg.default_prepend_bos)


def encode(model, text: str, prepend_bos: bool | None = None, max_tokens: int | None = None) -> torch.Tensor:
    """Token ids (1-D, long) for ``text``.

    ``prepend_bos=None`` follows the model's documented policy (``ModelSpec.prepend_bos``);
    True prepends the spec's BOS token; False never does. The tokenizer's own special-token
    insertion is always off, so the policy here is the only one in force.
    """
    if not isinstance(text, str) or not text.strip():
        raise InputError("The prompt is empty: enter some text.")
    if model.tokenizer is None:
        raise InputError("This model has no tokenizer: pass token ids instead of text.")
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if prepend_bos is None:
        prepend_bos = default_prepend_bos(model)
    if prepend_bos:
        b = bos_id(model)
        if b is None:
            raise InputError("This model has no BOS token to prepend.")
        ids = [b] + list(ids)
    limit = model.cfg.n_ctx if max_tokens is None else min(max_tokens, model.cfg.n_ctx)
    check_length(len(ids), limit)
    return torch.tensor(ids, dtype=torch.long)


def check_length(n_tokens: int, limit: int) -> None:
    if n_tokens == 0:
        raise InputError("The prompt is empty: enter some text.")
    if n_tokens > limit:
        raise InputError(f"The input is {n_tokens} tokens long; this model takes at most {limit} (n_ctx).")


def as_token_tensor(model, tokens) -> torch.Tensor:
    """Accept text, a list of ids or a 1-D/2-D tensor; return a 2-D long tensor [1 or B, T]."""
    if isinstance(tokens, str):
        t = encode(model, tokens)
    else:
        t = torch.as_tensor(tokens, dtype=torch.long)
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.shape[1] == 0:
        raise InputError("Token input must be a non-empty sequence of ids.")
    check_length(t.shape[1], model.cfg.n_ctx)
    if int(t.max()) >= model.cfg.d_vocab or int(t.min()) < 0:
        raise InputError(f"Token ids must lie in 0..{model.cfg.d_vocab - 1}.")
    return t


def str_tokens(model, ids) -> list[str]:
    """Readable labels for token ids (one per id)."""
    ids = [int(i) for i in torch.as_tensor(ids).reshape(-1)]
    if model.tokenizer is None:
        return [f"<{i}>" for i in ids]
    return [model.tokenizer.decode([i]) for i in ids]


def single_token(model, token) -> int:
    """The id of a single-token string (or an id, range-checked). A string that is not
    exactly one token is refused with a message that shows how it splits."""
    if isinstance(token, int) and not isinstance(token, bool):
        if not 0 <= token < model.cfg.d_vocab:
            raise InputError(f"Token id {token} is out of range: this model has {model.cfg.d_vocab} tokens.")
        return token
    if not isinstance(token, str) or token == "":
        raise InputError(f"Expected a token (string or id), not {token!r}.")
    if model.tokenizer is None:
        raise InputError("This model has no tokenizer: give token ids.")
    ids = model.tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [model.tokenizer.decode([i]) for i in ids]
        raise InputError(f"{token!r} is {len(ids)} tokens ({pieces}), not one.")
    return int(ids[0])


def decode(model, ids) -> str:
    """Text of token ids (space-joined ids for tokenizer-less models)."""
    ids = [int(i) for i in torch.as_tensor(ids).reshape(-1)]
    if model.tokenizer is None:
        return " ".join(map(str, ids))
    return model.tokenizer.decode(ids)


def text_ids(model, text: str) -> list[int]:
    """Token ids of a text of any length, no BOS and no length check — for long texts that
    the caller cuts to size (streaming, text sets)."""
    if not isinstance(text, str) or text == "":
        raise InputError("The text is empty.")
    if model.tokenizer is None:
        raise InputError("This model has no tokenizer: pass token ids instead of text.")
    return [int(i) for i in model.tokenizer(text, add_special_tokens=False)["input_ids"]]


def str_token(model, i: int) -> str:
    """The text of one token id."""
    return str_tokens(model, [int(i)])[0]


def vocab_strings(model):
    """numpy object array [d_vocab]: every token's text (``<id>`` where the tokenizer has
    none, or for tokenizer-less models)."""
    import numpy as np

    V = model.cfg.d_vocab
    tok = model.tokenizer
    if tok is None:
        return np.array([f"<{i}>" for i in range(V)], dtype=object)
    pieces = tok.convert_ids_to_tokens(list(range(min(V, len(tok)))))
    out = [tok.convert_tokens_to_string([p]) if p is not None else f"<{i}>" for i, p in enumerate(pieces)]
    out += [f"<{i}>" for i in range(len(out), V)]
    return np.array(out, dtype=object)


def token_ids(model, token) -> list[int]:
    """Token ids for a token id (range-checked) or a non-empty string (tokenised without BOS;
    may be several tokens). Refuses strings with text the tokenizer does not know."""
    if hasattr(token, "__index__") and not isinstance(token, (str, bool)):  # int, numpy integer
        check_range("token id", int(token), model.cfg.d_vocab)
        return [int(token)]
    if not isinstance(token, str) or token == "":
        raise InputError("Give a token: a non-empty string or a token id.")
    if model.tokenizer is None:
        if token.strip() == token and token.isdigit():
            return token_ids(model, int(token))
        raise InputError("This model has no tokenizer: give a token id.")
    ids = text_ids(model, token)
    if not ids:
        raise InputError(f"{token!r} tokenises to nothing: give another string.")
    unk = getattr(model.tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids:
        raise InputError(f"{token!r} contains text the tokenizer does not know.")
    return ids
