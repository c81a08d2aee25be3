"""Lexical classes of token strings, for tables of per-token scores grouped by kind of token
(LLM-Microscope's per-token nonlinearity and contextualisation, Razzhigaev et al. 2025)."""

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
