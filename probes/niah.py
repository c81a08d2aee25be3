"""Needle in a haystack (NIAH) tests: needles, haystack, prompts, answers and their scoring
(docs/retrieval.md#retrieval-score). The accuracy grid is ``analyses.niah``; retrieval-head
detection, masking, KV curves and DeCoRe build their prompts here.

The protocol follows Wu et al. 2024's detection script (nightdessert/Retrieval_Head,
``retrieval_head_detection.py``), with every choice explicit and recorded:

* **haystack**: the first tokens of a shipped public-domain long text (``data/long/``,
  default *Paradise Lost* I–III), tokenised once, without BOS;
* **needles**: ``data/tasks/needles.jsonl`` — sentences, questions and answer parts written
  for this project (``{"needle", "question", "answer"}``). ``answer`` is the reference's
  ``real_needle``: the part of the needle that answers the question, a substring at its end
  (needle "The password for the old lighthouse on Kestrel Island is blue pelican
  seventeen.", answer "blue pelican seventeen"); the text before it restates the question;
* **context length** n = haystack + needle tokens (the prompt adds the template and the
  question around it); **depth** d ∈ [0, 1]: the needle goes in at token ``int(d·h)`` of
  the h haystack tokens, moved back to the nearest line start (the reference moves back to
  the nearest period; verse breaks at lines), followed by a newline token;
* **answer span**: the prompt is built from token ids piece by piece — haystack, the
  needle's lead-in, its answer part (with the space before it), the rest of the needle
  (its final period), haystack, template — so the answer's tokens are known exactly (the
  reference recovers them by a 90 % token-set overlap search for ``real_needle``). Each
  piece is tokenised on its own; where the tokenizer would merge characters across a
  piece boundary when it reads the whole needle, the prompt keeps the pieces' tokens (the
  same text, split at the boundary; a tokenizer for which the split pieces decode to other
  text is refused), so the span never holds a token that is half lead-in;
* **prompt**: ``plain`` — context + ``"Based on the content of the book, Question:
  {q}\nAnswer:"`` with nothing between them (the reference's format for base models);
  ``plain_newline`` — the same with a newline before "Based on" (this project's variant);
  ``chat`` — the tokenizer's chat template around ``"<book>{context}</book>\nBased on the
  content of the book, Question: {q}\nAnswer:"`` with the generation prompt (the
  reference's format for instruct models). ``auto`` picks ``chat`` when the tokenizer has
  a chat template, else ``plain``;
* **decoding**: greedy, KV-cached, at most ``max_new_tokens`` (reference: 50) tokens,
  stopping after EOS or after any token whose text contains a newline (the reference stops
  at the newline token only);
* **success**: ROUGE-1 recall of the answer part by the response > 0.5, as the reference
  (``rouge_score`` with ``use_stemmer=True``): lower-case, non-alphanumerics to spaces,
  words longer than 3 characters reduced by NLTK's Porter stemmer. A response that only
  restates the question recalls none of the answer part's words (the shipped answers share
  none with their questions), so success is NIAH accuracy.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import pandas as pd

from mechscope.probes.decoding import generate
from mechscope.probes.errors import InputError, check_range
from mechscope.probes.interventions import Intervention
from mechscope.probes.results import Params, record
from mechscope.probes.tokens import bos_id, default_prepend_bos, text_ids

QUESTION = "Based on the content of the book, Question: {question}\nAnswer:"
BOOK_OPEN, BOOK_CLOSE = "<book>", "</book>\n"
FORMATS = ("auto", "chat", "plain")  # prompt formats (also used by other analyses' prompts)
NIAH_FORMATS = FORMATS + ("plain_newline",)  # + this project's plain variant: "\n" before "Based on"
_CONTENT = "\x00MECHSCOPE_CONTENT\x00"


# ---------------------------------------------------------------------------------------
# needles, haystack, ROUGE


@dataclass(frozen=True)
class Needle:
    """A needle sentence, its question and its answer part (Wu et al.'s ``real_needle``)."""

    needle: str
    question: str
    answer: str


def answer_offset(needle: Needle) -> int:
    """Where the answer part starts in the needle (its last occurrence). InputError unless it
    is a non-empty substring that ends the needle (only punctuation or spaces may follow)."""
    if not needle.answer.strip():
        raise InputError(f"The needle {needle.needle!r} has an empty answer part.")
    at = needle.needle.rfind(needle.answer)
    if at < 0:
        raise InputError(f"The answer part {needle.answer!r} is not a substring of its needle {needle.needle!r}.")
    rest = needle.needle[at + len(needle.answer):]
    if any(c.isalnum() for c in rest):
        raise InputError(f"The answer part {needle.answer!r} does not end its needle {needle.needle!r} "
                         f"({rest!r} follows it).")
    return at


def load_needles(name: str = "needles") -> list[Needle]:
    """The shipped needles (``data/tasks/<name>.jsonl``); InputError if a record lacks a
    field or its answer part does not end its needle (:func:`answer_offset`)."""
    from mechscope.probes import datasets

    out = []
    for i, it in enumerate(datasets.load_task(name)):
        missing = [k for k in ("needle", "question", "answer") if not isinstance(it.get(k), str)]
        if missing:
            raise InputError(f"Needle {i} of {name!r} has no {', '.join(missing)}.")
        nd = Needle(it["needle"], it["question"], it["answer"])
        answer_offset(nd)
        out.append(nd)
    return out


_ROUGE_TOKEN = re.compile(r"[^a-z0-9]+")


@functools.lru_cache(maxsize=1)
def _porter():
    from nltk.stem.porter import PorterStemmer  # NLTK: a dependency of sae-lens

    return PorterStemmer()


def rouge_tokens(text: str, stem: bool = True) -> list[str]:
    """``rouge_score``'s tokenisation: lower-case, runs of non-alphanumerics split, and with
    ``stem`` (the reference's ``use_stemmer=True``) words longer than 3 characters reduced
    by NLTK's Porter stemmer, as ``rouge_score`` does."""
    words = [t for t in _ROUGE_TOKEN.split(text.lower()) if t]
    if stem:
        porter = _porter()
        words = [porter.stem(w) if len(w) > 3 else w for w in words]
    return [w for w in words if w]


def rouge1_recall(reference: str, response: str, stem: bool = True) -> float:
    """ROUGE-1 recall: clipped unigram overlap / number of reference unigrams (0 if empty)."""
    ref, hyp = Counter(rouge_tokens(reference, stem)), Counter(rouge_tokens(response, stem))
    total = sum(ref.values())
    if total == 0:
        return 0.0
    return sum(min(c, hyp[w]) for w, c in ref.items()) / total


def _ids(model, text: str) -> list[int]:
    return text_ids(model, text) if text else []


@functools.lru_cache(maxsize=4)
def _haystack_cached(model, name: str, digest: str) -> tuple[int, ...]:
    from mechscope.probes import datasets

    text = datasets.load_long_text(name)
    return tuple(_ids(model, text))


def haystack_ids(model, name: str = "paradise_lost") -> tuple[int, ...]:
    """The long text's token ids (no BOS), tokenised once per model and file content."""
    from mechscope.probes import datasets

    if model.tokenizer is None:
        raise InputError("NIAH needs a model with a tokenizer.")
    text = datasets.load_long_text(name)  # checksum-verified on every call
    return _haystack_cached(model, name, str(hash(text)))


@functools.lru_cache(maxsize=4)
def _newline_ids_cached(tokenizer_key: int, tokenizer) -> frozenset[int]:
    vocab = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(vocab)])
    return frozenset(i for i, t in enumerate(texts) if "\n" in t)


def newline_ids(model) -> frozenset[int]:
    """Token ids whose text contains a newline (the reference's stop condition; none for a
    model without a tokenizer)."""
    if model.tokenizer is None:
        return frozenset()
    return _newline_ids_cached(id(model.tokenizer), model.tokenizer)


def response_text(model, new_tokens) -> str:
    """The answer's text without EOS/special tokens (ids joined by spaces without a tokenizer)."""
    if model.tokenizer is None:
        return " ".join(map(str, new_tokens))
    eos = getattr(model.tokenizer, "eos_token_id", None)
    return model.tokenizer.decode([t for t in new_tokens if t != eos], skip_special_tokens=True).strip()


def resolve_format(model, prompt_format: str, formats: Sequence[str] = FORMATS) -> str:
    """``auto`` → ``chat`` when the tokenizer has a chat template, else ``plain``."""
    if prompt_format not in formats:
        raise InputError(f"Unknown prompt format {prompt_format!r}: use one of {', '.join(formats)}.")
    has_chat = bool(getattr(model.tokenizer, "chat_template", None))
    if prompt_format == "auto":
        return "chat" if has_chat else "plain"
    if prompt_format == "chat" and not has_chat:
        raise InputError("This model's tokenizer has no chat template: use prompt_format='plain'.")
    return prompt_format


def prompt_pieces(model, question: str, fmt: str) -> tuple[str, str]:
    """The text before and after the context, for a resolved format (see the module)."""
    q = QUESTION.format(question=question)
    if fmt == "plain":
        return "", q
    if fmt == "plain_newline":
        return "", "\n" + q
    rendered = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": BOOK_OPEN + _CONTENT + BOOK_CLOSE + q}], tokenize=False, add_generation_prompt=True)
    before, _, after = rendered.partition(_CONTENT)
    return before, after


# ---------------------------------------------------------------------------------------
# one test


@record("niah_test")
@dataclass(frozen=True)
class NiahTest:
    """One built test. ``prompt_ids`` is not saved in Results (rebuilt from the grid).
    ``answer_start``/``answer_end``: the answer part's tokens in the prompt (the retrieval
    score's span); None for a hand-built test that has none (it cannot be scored)."""

    needle_index: int
    length: int  # context tokens: haystack + needle (+ its newline)
    depth: float  # requested depth in [0, 1]
    insert_at: int  # haystack tokens before the needle
    needle_start: int  # span of the needle's tokens in the prompt, [start, end)
    needle_end: int
    prompt_len: int
    prompt_format: str
    prompt_ids: tuple[int, ...] = field(default=(), repr=False, compare=False)
    answer_start: int | None = None  # span of the answer part's tokens, [start, end), inside the needle's
    answer_end: int | None = None

    @property
    def actual_depth(self) -> float:
        h = self.length - (self.needle_end - self.needle_start) - 1
        return self.insert_at / h if h > 0 else 0.0

    @property
    def answer_span(self) -> tuple[int, int]:
        """[start, end) of the answer part's tokens (InputError if the test has none)."""
        a, b = self.answer_start, self.answer_end
        if a is None or b is None or not self.needle_start <= a < b <= self.needle_end:
            raise InputError(f"This NIAH test has no answer span inside its needle (answer [{a}, {b}), "
                             f"needle [{self.needle_start}, {self.needle_end})).")
        return a, b


def needle_pieces(model, needle: Needle) -> tuple[list[int], list[int], list[int]]:
    """The needle's token ids in three pieces: the lead-in (up to the space before the
    answer part), the answer part with that space, the rest (punctuation). Each piece is
    tokenised on its own, so the answer's tokens are exactly the middle piece, even where
    the tokenizer merges across a boundary when it reads the whole needle (see the module)."""
    at = answer_offset(needle)
    end = at + len(needle.answer)
    cut = len(needle.needle[:at].rstrip())  # the space before the answer goes with the answer
    lead, ans, rest = (_ids(model, needle.needle[:cut]), _ids(model, needle.needle[cut:end]),
                       _ids(model, needle.needle[end:]))
    if not ans:
        raise InputError(f"The answer part {needle.answer!r} has no tokens.")
    whole = _ids(model, needle.needle)
    if lead + ans + rest != whole and model.tokenizer.decode(lead + ans + rest) != model.tokenizer.decode(whole):
        raise InputError(f"Split at its answer part, the needle {needle.needle!r} does not read the same with this "
                         f"tokenizer.")
    return lead, ans, rest


def build_test(model, needle: Needle, length: int, depth: float, prompt_format: str = "auto",
               needle_index: int = 0, long_text: str = "paradise_lost", prepend_bos: bool | None = None,
               max_new_tokens: int = 0) -> NiahTest:
    """One NIAH prompt as token ids with the exact spans of the needle and its answer part."""
    if not isinstance(depth, (int, float)) or not 0.0 <= float(depth) <= 1.0:
        raise InputError(f"Depth {depth!r} is outside [0, 1].")
    fmt = resolve_format(model, prompt_format, NIAH_FORMATS)
    if model.tokenizer is None:
        raise InputError("NIAH needs a model with a tokenizer.")
    lead, ans, rest = needle_pieces(model, needle)
    needle_ids = lead + ans + rest
    nl = _ids(model, "\n")
    hay_all = haystack_ids(model, long_text)
    if not hay_all:
        raise InputError("The haystack is empty.")
    n_hay = int(length) - len(needle_ids) - len(nl)
    if n_hay < 1:
        raise InputError(f"The needle ({len(needle_ids) + len(nl)} tokens) does not fit in a context of {length} tokens.")
    if n_hay > len(hay_all):
        raise InputError(f"The haystack {long_text!r} has {len(hay_all)} tokens; a context of {length} needs {n_hay}.")
    hay = list(hay_all[:n_hay])
    target = int(n_hay * float(depth))
    newl = newline_ids(model)
    at = target
    while at > 0 and hay[at - 1] not in newl:
        at -= 1
    context = hay[:at] + needle_ids + nl + hay[at:]
    before, after = prompt_pieces(model, needle.question, fmt)
    pre = _ids(model, before)  # chat: the template's head, ending with "<book>"
    bos = default_prepend_bos(model) if prepend_bos is None else prepend_bos
    head = ([bos_id(model)] if bos else []) + pre
    ids = head + context + _ids(model, after)
    total = len(ids) + max_new_tokens
    if total > model.cfg.n_ctx:
        raise InputError(f"The NIAH prompt ({len(ids)} tokens) + {max_new_tokens} new tokens exceeds n_ctx "
                         f"({model.cfg.n_ctx}); use a shorter context length.")
    start = len(head) + at
    return NiahTest(needle_index, int(length), float(depth), at, start, start + len(needle_ids), len(ids), fmt,
                    tuple(int(i) for i in ids), start + len(lead), start + len(lead) + len(ans))


# ---------------------------------------------------------------------------------------
# the grid (shared by NIAH accuracy and retrieval-head detection)


@dataclass(frozen=True)
class GridParams(Params):
    """Fields of a NIAH grid (mixin of the NIAH and retrieval-head parameters)."""

    lengths: tuple[int, ...] = field(default=(500, 1000, 2000), metadata={"help": "context lengths (tokens)"})
    depths: tuple[float, ...] = field(default=(0.0, 0.25, 0.5, 0.75, 1.0), metadata={"help": "needle depths in [0, 1]"})
    needles: tuple[int, ...] = field(default=(), metadata={"help": "needle indices (empty: all shipped needles)"})
    prompt_format: Literal["auto", "chat", "plain", "plain_newline"] = field(
        default="auto", metadata={"help": "chat template or plain (the reference's forms); plain_newline: "
                                          "plain with a newline before the question"})
    max_new_tokens: int = field(default=50, metadata={"help": "greedy tokens per answer (reference 50)"})
    recall_threshold: float = field(default=0.5, metadata={"help": "ROUGE-1 recall of the answer part that a "
                                                                   "correct answer exceeds"})
    long_text: str = field(default="paradise_lost", metadata={"help": "shipped long text for the haystack"})
    prepend_bos: bool | None = field(default=None, metadata={"help": "prepend BOS (None: the model's policy)"})

    def __post_init__(self):
        object.__setattr__(self, "lengths", tuple(int(x) for x in self.lengths))
        object.__setattr__(self, "depths", tuple(float(x) for x in self.depths))
        object.__setattr__(self, "needles", tuple(int(x) for x in self.needles))
        if not self.lengths or not self.depths:
            raise InputError("Give at least one context length and one depth.")
        for d in self.depths:
            if not 0.0 <= d <= 1.0:
                raise InputError(f"Depth {d:g} is outside [0, 1].")
        if any(n < 1 for n in self.lengths):
            raise InputError("Context lengths must be positive.")
        if self.max_new_tokens < 1:
            raise InputError("max_new_tokens must be at least 1.")
        if self.prompt_format not in NIAH_FORMATS:
            raise InputError(f"Unknown prompt format {self.prompt_format!r}: use one of {', '.join(NIAH_FORMATS)}.")


def grid_tests(model, params: GridParams, needles: Sequence[Needle] | None = None) -> list[tuple[NiahTest, Needle]]:
    """Every (needle, length, depth) test of the grid, needle-major, with its needle."""
    all_needles = list(needles) if needles is not None else load_needles()
    idx = params.needles or tuple(range(len(all_needles)))
    for i in idx:
        check_range("needle", i, len(all_needles))
    out = []
    for i in idx:
        for n in params.lengths:
            for d in params.depths:
                out.append((build_test(model, all_needles[i], n, d, params.prompt_format, i, params.long_text,
                                       params.prepend_bos, params.max_new_tokens), all_needles[i]))
    return out


@record("niah_answer")
@dataclass(frozen=True)
class NiahAnswer:
    response: str
    new_tokens: tuple[int, ...]
    recall: float  # ROUGE-1 recall of the answer part (> threshold: correct, and the test counts)

    @classmethod
    def of(cls, needle: Needle, response: str, new_tokens) -> "NiahAnswer":
        return cls(response, tuple(int(t) for t in new_tokens), rouge1_recall(needle.answer, response))


def answer(model, test: NiahTest, needle: Needle, max_new_tokens: int = 50,
           interventions: Sequence[Intervention] = (), reducers: dict | None = None, kv_policy="full",
           intervention_scope: str = "prompt_and_decode") -> NiahAnswer:
    """Greedy answer to one test (stops at EOS or a newline token) and its ROUGE-1 recall of the
    answer part; ``intervention_scope``: see :func:`probes.decoding.generate`."""
    gen = generate(model, list(test.prompt_ids), max_new_tokens=max_new_tokens, strategy="greedy",
                   interventions=interventions, kv_policy=kv_policy, reducers=reducers,
                   stop_tokens=newline_ids(model), intervention_scope=intervention_scope)
    response = response_text(model, gen.new_tokens)
    return NiahAnswer.of(needle, response, gen.new_tokens)


# ---------------------------------------------------------------------------------------
# NIAH accuracy (with optional interventions)


def tests_frame(tests: Sequence[NiahTest], answers: Sequence[NiahAnswer], threshold: float) -> pd.DataFrame:
    """One row per test; ``correct``: ROUGE-1 recall of the answer part > ``threshold`` (NIAH
    accuracy, and the tests that count for the retrieval score). Older saved frames may also
    hold ``counted`` (the tests that counted) and ``key_recall`` (ignored)."""
    rows = []
    for t, a in zip(tests, answers):
        rows.append({"needle": t.needle_index, "length": t.length, "depth": t.depth, "actual_depth": t.actual_depth,
                     "prompt_len": t.prompt_len, "needle_start": t.needle_start, "needle_end": t.needle_end,
                     "answer_start": t.answer_start, "answer_end": t.answer_end,
                     "response": a.response, "recall": a.recall, "correct": a.recall > threshold,
                     "n_new": len(a.new_tokens)})
    return pd.DataFrame(rows)


def grid_figure(frame: pd.DataFrame, title: str):
    import plotly.graph_objects as go

    if frame.empty:
        return go.Figure().update_layout(title=title + " (no tests finished)")
    acc = frame.groupby(["depth", "length"])["correct"].mean().unstack("length")
    fig = go.Figure(go.Heatmap(z=acc.values, x=[str(c) for c in acc.columns], y=[f"{d:.2f}" for d in acc.index],
                               zmin=0, zmax=1, colorscale="RdYlGn", colorbar={"title": "accuracy"},
                               hovertemplate="length %{x}<br>depth %{y}<br>accuracy %{z:.2f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="context length (tokens)", yaxis_title="needle depth",
                      xaxis_type="category", yaxis_type="category")
    return fig


def accuracy_of(frame: pd.DataFrame) -> float:
    return float(np.mean(frame["correct"])) if len(frame) else float("nan")
