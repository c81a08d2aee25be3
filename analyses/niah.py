"""Needle in a haystack (NIAH): the test builder and the accuracy grid (REFERENCES §5).

The protocol follows Wu et al. 2024's detection script (nightdessert/Retrieval_Head), with
every choice explicit and recorded:

* **haystack**: the first tokens of a shipped public-domain long text (``data/long/``,
  default *Paradise Lost* I–III), tokenised once, without BOS;
* **needles**: ``data/tasks/needles.jsonl`` — sentences, questions and reference answers
  written for this project (``{"needle", "question", "answer"}``);
* **context length** n = haystack + needle tokens (the prompt adds the template and the
  question around it); **depth** d ∈ [0, 1]: the needle goes in at token ``int(d·h)`` of
  the h haystack tokens, moved back to the nearest line start (the reference moves back to
  the nearest period; verse breaks at lines), followed by a newline token;
* **prompt** (token ids, built piece by piece, so the needle's span is exact — the
  reference recovers it by a 90 % token-set overlap search):
  ``plain`` — context + ``"\\nBased on the content of the book, Question: {q}\\nAnswer:"``
  (the reference's format for base models); ``chat`` — the tokenizer's chat template around
  ``"<book>{context}</book>\\nBased on the content of the book, Question: {q}\\nAnswer:"``
  with the generation prompt (the reference's format for instruct models). ``auto`` picks
  ``chat`` when the tokenizer has a chat template, else ``plain``;
* **decoding**: greedy, KV-cached, at most ``max_new_tokens`` (reference: 50) tokens,
  stopping after EOS or after any token whose text contains a newline (the reference stops
  at the newline token);
* **success**: ROUGE-1 recall of the reference answer by the response > 0.5 (the
  reference: ``rouge_score`` with the Porter stemmer; here the same tokenisation —
  lower-case, non-alphanumerics to spaces — *without* stemming, so a response that matches
  only through inflection counts less; the needles' answers are copied verbatim by a
  model that retrieves them, where the two agree).
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Literal, Sequence

import numpy as np
import pandas as pd

from probes.decoding import generate
from probes.errors import InputError, check_range
from probes.interventions import Intervention, check_scope
from probes.models import model_id
from probes.results import Params, Result, analysis, record
from probes.tokens import bos_id, default_prepend_bos, text_ids

QUESTION = "\nBased on the content of the book, Question: {question}\nAnswer:"
BOOK_OPEN, BOOK_CLOSE = "<book>", "</book>"
FORMATS = ("auto", "chat", "plain")
_CONTENT = "\x00MECHSCOPE_CONTENT\x00"


# ---------------------------------------------------------------------------------------
# needles, haystack, ROUGE


@dataclass(frozen=True)
class Needle:
    needle: str
    question: str
    answer: str


def load_needles(name: str = "needles") -> list[Needle]:
    """The shipped needles (``data/tasks/<name>.jsonl``)."""
    from probes import datasets

    return [Needle(it["needle"], it["question"], it["answer"]) for it in datasets.load_task(name)]


_ROUGE_TOKEN = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """rouge_score's default tokenisation (lower-case, non-alphanumerics split), no stemming."""
    return [t for t in _ROUGE_TOKEN.split(text.lower()) if t]


def rouge1_recall(reference: str, response: str) -> float:
    """ROUGE-1 recall: clipped unigram overlap / number of reference unigrams (0 if empty)."""
    ref, hyp = Counter(rouge_tokens(reference)), Counter(rouge_tokens(response))
    total = sum(ref.values())
    if total == 0:
        return 0.0
    return sum(min(c, hyp[w]) for w, c in ref.items()) / total


def key_recall(needle: Needle, response: str) -> float:
    """ROUGE-1 recall of the answer's *key* words: the answer's unigrams (with their counts)
    that the question does not already contain. A response that only restates the question
    ("The password for the old lighthouse on Kestrel Island is …") scores 0 here, while its
    plain ROUGE-1 recall can exceed 0.5 when the question shares most of the answer's words
    (it does for the shipped needles). Used for NIAH *accuracy*; the detection criterion of
    Wu et al. (which tests count) stays plain ROUGE-1 recall (REFERENCES §5)."""
    key = Counter(rouge_tokens(needle.answer)) - Counter(rouge_tokens(needle.question))
    total = sum(key.values())
    if total == 0:
        raise InputError("The needle's answer has no word beyond its question's: nothing to check recall of.")
    hyp = Counter(rouge_tokens(response))
    return sum(min(c, hyp[w]) for w, c in key.items()) / total


def _ids(model, text: str) -> list[int]:
    return text_ids(model, text) if text else []


@functools.lru_cache(maxsize=4)
def _haystack_cached(model, name: str, digest: str) -> tuple[int, ...]:
    from probes import datasets

    text = datasets.load_long_text(name)
    return tuple(_ids(model, text))


def haystack_ids(model, name: str = "paradise_lost") -> tuple[int, ...]:
    """The long text's token ids (no BOS), tokenised once per model and file content."""
    from probes import datasets

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


def resolve_format(model, prompt_format: str) -> str:
    if prompt_format not in FORMATS:
        raise InputError(f"Unknown prompt format {prompt_format!r}: use one of {', '.join(FORMATS)}.")
    has_chat = bool(getattr(model.tokenizer, "chat_template", None))
    if prompt_format == "auto":
        return "chat" if has_chat else "plain"
    if prompt_format == "chat" and not has_chat:
        raise InputError("This model's tokenizer has no chat template: use prompt_format='plain'.")
    return prompt_format


def prompt_pieces(model, question: str, fmt: str) -> tuple[str, str]:
    """The text before and after the context, for a resolved format."""
    q = QUESTION.format(question=question)
    if fmt == "plain":
        return "", q
    rendered = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": BOOK_OPEN + _CONTENT + BOOK_CLOSE + q}], tokenize=False, add_generation_prompt=True)
    before, _, after = rendered.partition(_CONTENT)
    return before, after


# ---------------------------------------------------------------------------------------
# one test


@record("niah_test")
@dataclass(frozen=True)
class NiahTest:
    """One built test. ``prompt_ids`` is not saved in Results (rebuilt from the grid)."""

    needle_index: int
    length: int  # context tokens: haystack + needle (+ its newline)
    depth: float  # requested depth in [0, 1]
    insert_at: int  # haystack tokens before the needle
    needle_start: int  # span of the needle's tokens in the prompt, [start, end)
    needle_end: int
    prompt_len: int
    prompt_format: str
    prompt_ids: tuple[int, ...] = field(default=(), repr=False, compare=False)

    @property
    def actual_depth(self) -> float:
        h = self.length - (self.needle_end - self.needle_start) - 1
        return self.insert_at / h if h > 0 else 0.0


def build_test(model, needle: Needle, length: int, depth: float, prompt_format: str = "auto",
               needle_index: int = 0, long_text: str = "paradise_lost", prepend_bos: bool | None = None,
               max_new_tokens: int = 0) -> NiahTest:
    """One NIAH prompt as token ids with the needle's exact span."""
    if not isinstance(depth, (int, float)) or not 0.0 <= float(depth) <= 1.0:
        raise InputError(f"Depth {depth!r} is outside [0, 1].")
    fmt = resolve_format(model, prompt_format)
    needle_ids = _ids(model, needle.needle)
    if not needle_ids:
        raise InputError("The needle is empty.")
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
                    tuple(int(i) for i in ids))


# ---------------------------------------------------------------------------------------
# the grid (shared by NIAH accuracy and retrieval-head detection)


@dataclass(frozen=True)
class GridParams(Params):
    """Fields of a NIAH grid (mixin of the NIAH and retrieval-head parameters)."""

    lengths: tuple[int, ...] = field(default=(500, 1000, 2000), metadata={"help": "context lengths (tokens)"})
    depths: tuple[float, ...] = field(default=(0.0, 0.25, 0.5, 0.75, 1.0), metadata={"help": "needle depths in [0, 1]"})
    needles: tuple[int, ...] = field(default=(), metadata={"help": "needle indices (empty: all shipped needles)"})
    prompt_format: Literal["auto", "chat", "plain"] = field(default="auto", metadata={"help": "chat template or plain"})
    max_new_tokens: int = field(default=50, metadata={"help": "greedy tokens per answer (reference 50)"})
    recall_threshold: float = field(default=0.5, metadata={"help": "ROUGE-1 recall a correct answer exceeds"})
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
        if self.prompt_format not in FORMATS:
            raise InputError(f"Unknown prompt format {self.prompt_format!r}: use one of {', '.join(FORMATS)}.")


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
    recall: float  # ROUGE-1 recall of the needle's answer (Wu et al.'s criterion for counting a test)
    key_recall: float = float("nan")  # recall of the answer's key words (NIAH accuracy); see key_recall()

    @classmethod
    def of(cls, needle: Needle, response: str, new_tokens) -> "NiahAnswer":
        return cls(response, tuple(int(t) for t in new_tokens), rouge1_recall(needle.answer, response),
                   key_recall(needle, response))


def answer(model, test: NiahTest, needle: Needle, max_new_tokens: int = 50,
           interventions: Sequence[Intervention] = (), reducers: dict | None = None, kv_policy="full",
           intervention_scope: str = "prompt_and_decode") -> NiahAnswer:
    """Greedy answer to one test (stops at EOS or a newline token) and its ROUGE-1 recall;
    ``intervention_scope``: see :func:`probes.decoding.generate`."""
    gen = generate(model, list(test.prompt_ids), max_new_tokens=max_new_tokens, strategy="greedy",
                   interventions=interventions, kv_policy=kv_policy, reducers=reducers,
                   stop_tokens=newline_ids(model), intervention_scope=intervention_scope)
    response = response_text(model, gen.new_tokens)
    return NiahAnswer.of(needle, response, gen.new_tokens)


# ---------------------------------------------------------------------------------------
# NIAH accuracy (with optional interventions)


def tests_frame(tests: Sequence[NiahTest], answers: Sequence[NiahAnswer], threshold: float) -> pd.DataFrame:
    rows = []
    for t, a in zip(tests, answers):
        rows.append({"needle": t.needle_index, "length": t.length, "depth": t.depth, "actual_depth": t.actual_depth,
                     "prompt_len": t.prompt_len, "needle_start": t.needle_start, "needle_end": t.needle_end,
                     "response": a.response, "recall": a.recall, "counted": a.recall > threshold,
                     "key_recall": a.key_recall, "correct": a.key_recall > threshold,
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


@dataclass(frozen=True)
class NiahParams(GridParams):
    """Parameters of :func:`niah`: the grid, plus interventions held during decoding (by
    default not on the prompt's prefill: Wu et al.'s masked NIAH, ``mask_scope``)."""

    kind: ClassVar[str] = "niah"
    interventions: tuple = field(default=(), metadata={"help": "interventions (e.g. head masks)"})
    kv_policy: object = field(default="full", metadata={"help": "KV-cache policy during decoding (a name or a policy)"})
    mask_scope: Literal["decode", "prompt_and_decode"] = field(
        default="decode", metadata={"help": "where the interventions act: decode = the last prompt token and the answer, "
                                            "prompt prefilled without them (the reference); prompt_and_decode = everywhere"})

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "interventions", tuple(self.interventions))
        if isinstance(self.kv_policy, str) and self.kv_policy != "full":
            from probes.kv_policies import resolve_kv_policy

            object.__setattr__(self, "kv_policy", resolve_kv_policy(self.kv_policy) or "none")
        check_scope(self.mask_scope)
        if self.interventions and self.mask_scope == "decode" and self.kv_policy == "none":
            raise InputError("Decode-only interventions need a KV cache: use mask_scope='prompt_and_decode' "
                             "or a KV-cache policy.")


@dataclass(frozen=True)
class NiahResult(Result):
    tests: pd.DataFrame
    prompt_format: str
    complete: bool = True  # False: interrupted, ``tests`` holds the finished ones
    mask_scope: str = "prompt_and_decode"  # where the interventions acted (older results: everywhere)

    kind = "niah"

    def __post_init__(self):
        if isinstance(self.params, NiahParams) and self.params.mask_scope != self.mask_scope:
            object.__setattr__(self, "params", self.params.replace(mask_scope=self.mask_scope))

    @property
    def accuracy(self) -> float:
        return float(self.tests["correct"].mean()) if len(self.tests) else float("nan")

    def to_frame(self) -> pd.DataFrame:
        return self.tests

    def figures(self) -> dict:
        ivs = ", ".join(iv.describe() for iv in self.params.interventions) or "no interventions"
        policy = self.params.kv_policy
        if not isinstance(policy, str):
            ivs += f"; KV cache: {policy.describe() if hasattr(policy, 'describe') else policy.name}"
        return {"niah_grid": grid_figure(self.tests, f"NIAH accuracy ({self.prompt_format} prompt; {ivs}): "
                                                     f"{self.accuracy:.2f}")}


@analysis(NiahParams)
def niah(model, params: NiahParams, progress: Callable[[int, int], None] | None = None) -> NiahResult:
    """Greedy NIAH accuracy over the grid (lengths × depths × needles). Interrupting
    (KeyboardInterrupt) returns the finished tests with ``complete=False``."""
    for iv in params.interventions:
        iv.validate(model)
    built = grid_tests(model, params)
    tests, answers, complete = [], [], True
    try:
        for i, (t, nd) in enumerate(built):
            answers.append(answer(model, t, nd, params.max_new_tokens, params.interventions,
                                  kv_policy=None if params.kv_policy == "none" else params.kv_policy,
                                  intervention_scope=params.mask_scope))
            tests.append(t)
            if progress is not None:
                progress(i + 1, len(built))
    except KeyboardInterrupt:
        complete = False
    return NiahResult(model_id=model_id(model), params=params, tests=tests_frame(tests, answers, params.recall_threshold),
                      prompt_format=resolve_format(model, params.prompt_format), complete=complete,
                      mask_scope=params.mask_scope)


def accuracy_of(frame: pd.DataFrame) -> float:
    return float(np.mean(frame["correct"])) if len(frame) else float("nan")
