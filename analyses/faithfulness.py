"""Contextual faithfulness (DeCoRe, Gema et al. 2024): does the model answer from the given context
when the context contradicts what it knows?

``data/tasks/faithfulness.jsonl`` holds counterfactual items written for this project
(``{"context", "question", "answer", "prior"}``: "In this story, the capital of France is
Lyon." → Lyon, prior Paris). An answer is correct when its first line contains the context's
answer (case-insensitive, word-bounded) and does not contain the prior answer.
:func:`evaluate` decodes every item with several strategies (greedy, DeCoRe, …) and
``probes.stats.bootstrap_ci`` gives percentile confidence intervals (paired for differences).
Not a registered analysis (no Result kind): the benchmark ``benchmarks/bench_faithfulness.py``
reports it.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

from mechscope.probes.niah import resolve_format, response_text
from mechscope.probes.datasets import load_task
from mechscope.probes.decoding import generate
from mechscope.probes.tokens import encode

INSTRUCTION = "Answer the question using only the story above, in a few words."


def load_items(name: str = "faithfulness") -> list[dict]:
    return load_task(name)


def prompt_text(model, item: dict, prompt_format: str = "auto") -> str:
    user = f"{item['context']}\n{INSTRUCTION}\nQuestion: {item['question']}"
    fmt = resolve_format(model, prompt_format)
    if fmt == "plain":
        return user + "\nAnswer:"
    return model.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                               add_generation_prompt=True)


def _has(text: str, phrase: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(phrase.lower()) + r"(?!\w)", text.lower()) is not None


def is_faithful(response: str, item: dict) -> bool:
    """The first line names the context's answer and not the prior one."""
    first = response.strip().split("\n", 1)[0] if response.strip() else ""
    return _has(first, item["answer"]) and not _has(first, item["prior"])


def evaluate(model, strategies: dict, items: Sequence[dict] | None = None, max_new_tokens: int = 12,
             prompt_format: str = "auto", progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """{strategy label: [n_items] 0/1 faithful} decoding each item with each strategy
    (stops at a newline token or EOS)."""
    from mechscope.probes.niah import newline_ids

    items = load_items() if items is None else list(items)
    out = {k: np.zeros(len(items)) for k in strategies}
    total = len(items) * len(strategies)
    for i, item in enumerate(items):
        ids = encode(model, prompt_text(model, item, prompt_format))
        for j, (label, strat) in enumerate(strategies.items()):
            gen = generate(model, ids.tolist(), max_new_tokens=max_new_tokens, strategy=strat,
                           stop_tokens=newline_ids(model))
            out[label][i] = float(is_faithful(response_text(model, gen.new_tokens), item))
            if progress is not None:
                progress(i * len(strategies) + j + 1, total)
    return out
