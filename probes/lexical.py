"""Classes of token strings, for tables of per-token scores grouped by kind of token:
:func:`lexical_class` (LLM-Microscope's per-token nonlinearity and contextualisation,
Razzhigaev et al. 2025, with stop words) and :func:`surface_class` (hidden-sink tables and
isotropy's token clouds: newline, space, punctuation, number, word)."""

from __future__ import annotations

import string

_STOP = set("""a an the and or but if of to in on at by for with from as is are was were be been it its
this that these those he she they we you i his her their our your my me him them us not no so than then
there here which who whom what when where why how do does did have has had will would can could should
may might must shall into onto over under about""".split())


def lexical_class(tok: str) -> str:
    """The lexical class of a token string: 'punctuation', 'stop word' (an English function
    word), 'number', 'space' or 'other' (surface rules on the stripped string)."""
    s = tok.strip()
    if not s:
        return "space"
    if all(c in string.punctuation for c in s):
        return "punctuation"
    if s.lower() in _STOP:
        return "stop word"
    if s.replace(".", "").isdigit():
        return "number"
    return "other"


def surface_class(tok: str) -> str:
    """'newline' (contains one), 'space', 'punctuation' (no letter or digit), 'number'
    (digits only) or 'word'."""
    if "\n" in tok:
        return "newline"
    t = tok.strip()
    if not t:
        return "space"
    if all(not c.isalnum() for c in t):
        return "punctuation"
    if t.isdigit():
        return "number"
    return "word"
