"""The one input pipeline for analyses that read texts: which texts, and their token ids.

* :class:`TextInputs` — the shared block of parameters (``texts``, ``text_set``,
  ``n_texts``, ``max_tokens``) that every such analysis' Params inherits, and the mapping of
  the names older saved results used.
* :func:`select_texts` — the texts an analysis reads: the given ``texts`` as they are, or the
  first ``n_texts`` of the shipped ``text_set`` (``probes.datasets``; ``mixed`` interleaves
  prose, code and numbers, so any prefix is balanced), each with its domain.
* :func:`encode_texts` — their token ids, each cut to ``max_tokens``.

Empty texts are refused (:class:`InputError` naming the text), never dropped: a dropped text
would shift the text indices that results report. No shipped text is empty.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Mapping, NamedTuple, Sequence

import torch

from mechscope.probes import datasets
from mechscope.probes.errors import InputError
from mechscope.probes.results import Params
from mechscope.probes.tokens import bos_id, default_prepend_bos, text_ids

CUSTOM = "texts"  # the domain of texts given as a plain list


def text_set_names() -> list[str]:
    """The shipped text sets, read from the data folder (``prose``, ``code``, ``numbers``, ``mixed``)."""
    return datasets.text_sets()


class Text(NamedTuple):
    domain: str
    text: object  # a string, or a tuple of token ids


def _normalise(texts):
    """Custom texts as hashable data: strings stay, token-id sequences become int tuples;
    a mapping domain → texts keeps its domains."""
    one = lambda x: x if isinstance(x, str) else tuple(int(i) for i in torch.as_tensor(x).reshape(-1).tolist())  # noqa: E731
    if isinstance(texts, Mapping):
        return {str(k): tuple(one(x) for x in v) for k, v in texts.items()}
    return tuple(one(x) for x in texts)


@dataclass(frozen=True)
class TextInputs(Params):
    """The texts an analysis reads. A subclass changes a default by re-declaring the field
    with the same factory (``n_texts: int | None = n_texts_field(64)``). The fields are
    keyword-only, so they never take an analysis' positional shortcuts."""

    texts: tuple | dict | None = field(default=None, kw_only=True, metadata={
        "help": "custom texts (strings or token-id lists; a dict domain → texts keeps domains), used as given; None: text_set"})
    text_set: str | None = field(default="mixed", kw_only=True, metadata={
        "help": "shipped text set", "choices": text_set_names})
    n_texts: int | None = field(default=None, kw_only=True, metadata={
        "help": "texts taken from text_set (None: all)"})
    max_tokens: int | None = field(default=256, kw_only=True, metadata={
        "help": "first tokens of each text (None: all)"})

    #: saved field name → current name, for results saved before these names were shared
    LEGACY_FIELDS: ClassVar[dict] = {}

    def __post_init__(self):
        if isinstance(self.texts, str):
            raise InputError(f"texts takes a list of texts; name a shipped set with text_set={self.texts!r}.")
        if self.texts is not None:
            object.__setattr__(self, "texts", _normalise(self.texts))
        if self.text_set is not None and not isinstance(self.text_set, str):
            raise InputError(f"text_set must be the name of a shipped text set, not {self.text_set!r}.")
        for name in ("n_texts", "max_tokens"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise InputError(f"{name} must be a positive integer or None, not {v!r}.")

    def selected(self, grouped: bool = False) -> list[Text]:
        """:func:`select_texts` of these parameters."""
        return select_texts(self.texts, self.text_set, self.n_texts, grouped=grouped)

    @classmethod
    def upgrade_saved(cls, fields: dict) -> dict:
        """Saved fields under the current names: when any field has a name no longer in use,
        every ``LEGACY_FIELDS`` rename applies at once (so two names may swap); ``texts``
        holding a set name becomes ``text_set`` ("" → None)."""
        out = dict(fields)
        current = {f.name for f in dataclasses.fields(cls)}
        if any(k in out and k not in current for k in cls.LEGACY_FIELDS):  # saved under the old names
            old = {k: out.pop(k) for k in list(out) if k in cls.LEGACY_FIELDS}
            out.update({cls.LEGACY_FIELDS[k]: v for k, v in old.items()})
        if isinstance(out.get("texts"), str):
            out["text_set"] = out.pop("texts") or None
        return out


def texts_field(help_: str | None = None, positional: bool = False):
    """``positional=True``: ``texts`` is the analysis' first positional shortcut (``fn(model, texts)``)."""
    f = TextInputs.__dataclass_fields__["texts"]
    return field(default=None, kw_only=not positional, metadata={**f.metadata, **({"help": help_} if help_ else {})})


def text_set_field(default: str | None = "mixed", help_: str | None = None):
    f = TextInputs.__dataclass_fields__["text_set"]
    return field(default=default, kw_only=True, metadata={**f.metadata, **({"help": help_} if help_ else {})})


def n_texts_field(default: int | None = None, help_: str | None = None):
    f = TextInputs.__dataclass_fields__["n_texts"]
    return field(default=default, kw_only=True, metadata={**f.metadata, **({"help": help_} if help_ else {})})


def max_tokens_field(default: int | None = 256, help_: str | None = None):
    f = TextInputs.__dataclass_fields__["max_tokens"]
    return field(default=default, kw_only=True, metadata={**f.metadata, **({"help": help_} if help_ else {})})


def select_texts(texts=None, text_set: str | None = "mixed", n_texts: int | None = None, *,
                 grouped: bool = False, data_dir=None) -> list[Text]:
    """The texts to read, each with its domain.

    ``texts`` (a list, or a dict domain → list) are used as given (domain ``"texts"`` for a
    list); otherwise the first ``n_texts`` of the shipped ``text_set`` in file order
    (``mixed``: interleaved by domain). ``grouped=True`` orders the same texts domain by
    domain (stable): ``mixed`` with 64 texts gives prose 0–21, code 0–20, numbers 0–20.
    """
    if texts is not None:
        if isinstance(texts, str):
            raise InputError(f"texts takes a list of texts; name a shipped set with text_set={texts!r}.")
        if isinstance(texts, Mapping):
            items = [Text(str(d), t) for d, ts in texts.items() for t in ts]
        else:
            items = [Text(CUSTOM, t) for t in texts]
    else:
        if text_set is None:
            raise InputError("Give texts or name a shipped text set.")
        if n_texts is not None and (isinstance(n_texts, bool) or not isinstance(n_texts, int) or n_texts < 1):
            raise InputError(f"n_texts must be a positive integer or None, not {n_texts!r}.")
        items = [Text(r.get("domain", text_set), r["text"]) for r in datasets.load_records(text_set, data_dir)[:n_texts]]
    if grouped:
        order = list(dict.fromkeys(t.domain for t in items))
        items = sorted(items, key=lambda t: order.index(t.domain))
    if not items:
        raise InputError("The text set is empty: give at least one text.")
    return items


def encode_texts(model, texts: Sequence, max_tokens: int | None = None,
                 prepend_bos: bool | None = None) -> list[torch.Tensor]:
    """Token ids (1-D long tensors) of each text, cut to its first ``max_tokens`` tokens.

    A text is a string (tokenised without the tokenizer's own special tokens; BOS as
    ``prepend_bos`` says: None follows the model's policy, ``probes.tokens.default_prepend_bos``,
    and the BOS counts towards ``max_tokens``) or a sequence of token ids (used as given,
    range-checked). :class:`Text` items are accepted. An empty text, or one longer than the
    model's context after the cut, is refused."""
    if prepend_bos is None:
        prepend_bos = default_prepend_bos(model)
    out = []
    for i, t in enumerate(texts):
        if isinstance(t, Text):
            t = t.text
        if isinstance(t, str):
            if not t.strip():
                raise InputError(f"Text {i} is empty: every text needs some content.")
            ids = text_ids(model, t)
            if prepend_bos:
                b = bos_id(model)
                if b is None:
                    raise InputError("This model has no BOS token to prepend.")
                ids = [b] + ids
        else:
            ids = [int(x) for x in torch.as_tensor(t).reshape(-1).tolist()]
            if not ids:
                raise InputError(f"Text {i} has no tokens.")
            if max(ids) >= model.cfg.d_vocab or min(ids) < 0:
                raise InputError(f"Token ids must lie in 0..{model.cfg.d_vocab - 1}.")
        ids = ids[:max_tokens]
        if len(ids) > model.cfg.n_ctx:
            raise InputError(f"Text {i} is {len(ids)} tokens long; this model takes at most {model.cfg.n_ctx} "
                             "(n_ctx): set max_tokens.")
        out.append(torch.tensor(ids, dtype=torch.long))
    if not out:
        raise InputError("No texts were given.")
    return out


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(TextInputs))
