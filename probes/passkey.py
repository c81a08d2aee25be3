"""Synthetic multi-passkey retrieval samples, DuoAttention's training data (Xiao et al.
2024, ``MultiplePasskeyRetrievalDataset`` in mit-han-lab/duo-attention), written for this
project: deterministic from a seed, haystack from the shipped long text
(:func:`probes.niah.haystack_ids`).

A sample is ``head + context + qa`` as token ids: ``head`` opens a book, ``context`` is a
slice of the haystack with ``n_passkeys`` passkey sentences inserted at sorted random depths
(each ``passkey_words`` words drawn from :data:`WORDS`), then the book closes and ``qa``
asks for each passkey in turn and gives it. As in the reference, the *supervised* positions
(``answer_start`` onwards) are the whole question-and-answer tail; the total length is the
requested context length exactly (the haystack slice is cut to fit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mechscope.probes.errors import InputError

WORDS = ("amber", "falcon", "granite", "harbor", "island", "jasper", "lantern", "meadow", "nickel", "orchid",
         "pepper", "quartz", "raven", "saddle", "timber", "velvet", "walnut", "willow", "cobalt", "dragon",
         "ember", "forest", "glacier", "hammer")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")

HEAD = "Read the following book carefully; passkeys are hidden in it.\n<book>\n"
TAIL = "\n</book>\n\n"
NEEDLE = "\n\nMemorise this: the {ordinal} passkey of the vault is {words}.\n\n"
QUESTION = "Which words form the {ordinal} passkey of the vault?\nPasskey: "
ANSWER = "{words}\n\n"


@dataclass(frozen=True)
class PasskeySample:
    ids: tuple[int, ...]
    answer_start: int  # positions >= answer_start are supervised (the QA tail)
    passkeys: tuple[str, ...]
    depths: tuple[float, ...]
    needle_starts: tuple[int, ...]  # token position of each inserted passkey sentence


def context_lengths(lo: int, hi: int, n: int) -> np.ndarray:
    """The reference's grid of context lengths: ``n`` evenly spaced integers in [lo, hi]."""
    return np.linspace(lo, hi, max(n, 1)).astype(int)


def make_sample(tokenize, haystack: tuple[int, ...], length: int, n_passkeys: int, passkey_words: int,
                rng: np.random.Generator, min_depth: float = 0.05, max_depth: float = 0.95) -> PasskeySample:
    """One sample of exactly ``length`` tokens. ``tokenize(text) -> list[int]`` (no BOS)."""
    if not 1 <= n_passkeys <= len(ORDINALS):
        raise InputError(f"n_passkeys must be in 1..{len(ORDINALS)}, not {n_passkeys}.")
    if passkey_words < 1:
        raise InputError("passkey_words must be at least 1.")
    if not 0.0 <= min_depth <= max_depth <= 1.0:
        raise InputError(f"Passkey depths need 0 <= min_depth <= max_depth <= 1 (got {min_depth}, {max_depth}).")
    keys = [" ".join(WORDS[i] for i in rng.integers(0, len(WORDS), passkey_words)) for _ in range(n_passkeys)]
    needles = [tokenize(NEEDLE.format(ordinal=ORDINALS[i], words=k)) for i, k in enumerate(keys)]
    qa = []
    for i, k in enumerate(keys):
        qa += tokenize(QUESTION.format(ordinal=ORDINALS[i])) + tokenize(ANSWER.format(words=k))
    head, tail = tokenize(HEAD), tokenize(TAIL)
    n_hay = int(length) - len(head) - len(tail) - len(qa) - sum(map(len, needles))
    if n_hay < 1:
        raise InputError(f"A context of {length} tokens cannot hold {n_passkeys} passkeys of {passkey_words} words "
                         f"(they need {int(length) - n_hay + 1}); use a longer context or fewer/shorter passkeys.")
    if n_hay > len(haystack):
        raise InputError(f"The haystack has {len(haystack)} tokens; a context of {length} needs {n_hay}.")
    start = int(rng.integers(0, len(haystack) - n_hay + 1))
    hay = list(haystack[start:start + n_hay])
    depths = np.sort(rng.uniform(min_depth, max_depth, n_passkeys))
    context, last, starts = [], 0, []
    for d, nd in zip(depths, needles):
        at = int(n_hay * d)
        context += hay[last:at]
        starts.append(len(head) + len(context))
        context += nd
        last = at
    context += hay[last:]
    ids = head + context + tail + qa
    return PasskeySample(tuple(int(i) for i in ids), len(head) + len(context) + len(tail), tuple(keys),
                         tuple(float(d) for d in depths), tuple(starts))


def passkey_samples(model, n: int, lengths: tuple[int, int], n_passkeys: int, passkey_words: int, seed: int,
                    n_lengths: int = 20, long_text: str = "paradise_lost") -> list[PasskeySample]:
    """``n`` samples for ``model``'s tokenizer, deterministic in ``seed``: sample i has a
    context length drawn from the grid :func:`context_lengths` (``n_lengths`` points over
    ``lengths``) and its own passkeys, depths and haystack slice."""
    from mechscope.probes.niah import haystack_ids
    from mechscope.probes.tokens import text_ids

    lo, hi = lengths
    if lo < 1 or hi < lo:
        raise InputError(f"Context lengths must satisfy 1 <= min <= max, not {lo}, {hi}.")
    if hi > model.cfg.n_ctx:
        raise InputError(f"Context length {hi} exceeds the model's n_ctx ({model.cfg.n_ctx}).")
    hay = haystack_ids(model, long_text)
    rng = np.random.default_rng(seed)
    grid = context_lengths(lo, hi, n_lengths)
    tok = lambda text: text_ids(model, text)  # noqa: E731
    return [make_sample(tok, hay, int(rng.choice(grid)), n_passkeys, passkey_words, rng) for _ in range(n)]
