"""Circuit-discovery tasks: clean / corrupted prompt pairs with a logit-difference metric.

Written for mechscope (no external source; the task *designs* follow the circuit literature:
IOI — Wang et al. 2022; greater-than — Hanna et al. 2023; docstring — Heimersheim & Janiak
2023). Every record is ``{"task", "clean", "corrupt", "answers", "distractors"}``:

* ``clean`` and ``corrupt`` tokenise to the same number of tokens (SmolLM2 tokenizer, no BOS);
* ``answers`` / ``distractors`` are lists of single-token strings; the metric is
  ``mean(logit[answers]) − mean(logit[distractors])`` at the last position (one answer and one
  distractor for IOI, docstring and induction; digit sets for greater-than, because SmolLM2
  splits numbers into single digits);
* the corrupted prompt removes the information the task needs, so a model doing the task has a
  positive logit difference on ``clean`` and about zero (or negative) on ``corrupt``.

Tasks:

``ioi``          "When Mary and John went to the store, John gave a drink to" → " Mary" (IO) vs
                 " John" (S). Corrupt: the first clause's two names become two other names
                 (the "ABC" corruption), so the sentence no longer says who the IO is.
``greater_than`` "The war lasted from the year 1742 to the year 17" → the next digit (SmolLM2 writes
                 numbers digit by digit): answers = digits above the start year's tens digit,
                 distractors = digits below it. Corrupt: start year 17**01** (Hanna et al.).
``docstring``    a Python ``def`` with four arguments and a Sphinx docstring that documents the
                 first two; next token after ``:param`` → the third argument vs the fourth.
                 Corrupt: the ``def`` line's argument names are replaced by other names.
``induction``    (our own choice) a list of random words and its repeat, cut after the third
                 repeated word → the fourth word vs the word put in its place in the corrupt
                 prompt's first half.

Two tasks in the formats of the MIB circuit track (Mueller et al. 2025), written here:

``mcqa``         MIB's multiple-choice format (copy-colours MCQA): "The pen is blue. What color
                 is the pen?" with four lettered options and "Answer:" → the letter of the
                 right option vs the letter it moves to in the corrupt prompt, whose options are
                 reordered (MIB's answer-position counterfactual).
``arithmetic``   two worked sums then "a+b=" with a single-digit answer (MIB's arithmetic task,
                 cut to sums below 10 so that the answer is one token) → a+b vs a+b', the
                 corrupt prompt's sum (its second operand changed).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 11
N_PER_TASK = 64

NAMES = ["Mary", "John", "Michael", "Jessica", "David", "Sarah", "James", "Emma", "Robert", "Laura",
         "Daniel", "Anna", "Thomas", "Lisa", "Paul", "Kate", "Mark", "Alice", "Peter", "Rachel",
         "George", "Helen", "Steven", "Susan", "Kevin", "Linda", "Brian", "Karen", "Jason", "Amy"]
PLACES = ["store", "garden", "school", "hospital", "office", "station", "park", "restaurant", "beach", "library"]
OBJECTS = ["drink", "book", "ring", "bone", "ball", "letter", "snack", "key", "gift", "pen"]
IOI_TEMPLATES = [
    "When {A} and {B} went to the {P}, {B} gave a {O} to",
    "After {A} and {B} arrived at the {P}, {B} handed a {O} to",
    "Then, {A} and {B} had a lot of fun at the {P}. {B} gave a {O} to",
    "While {A} and {B} were working at the {P}, {B} passed a {O} to",
    "Yesterday {B} and {A} walked to the {P}, and {B} threw a {O} to",
    "Friends {B} and {A} found a {O} at the {P}. {B} gave it to",
]

NOUNS = ["war", "expedition", "drought", "reign", "project", "journey", "strike", "siege", "famine", "dynasty"]
GT_TEMPLATES = [
    "The {N} lasted from the year {C}{Y} to the year {C}",
    "The {N} started in the year {C}{Y} and ended in the year {C}",
    "The {N} ran from {C}{Y} to {C}",
]

ARGS = ["files", "sources", "target", "mode", "data", "name", "path", "size", "value", "key", "items",
        "count", "config", "user", "url", "token", "index", "text", "result", "options", "output", "limit",
        "width", "height", "color", "level", "state", "query", "parent", "child"]
FUNCS = ["load", "run", "build", "parse", "update", "send", "check", "store", "render", "merge"]
WORDS = ["the", "quick", "river", "stone", "light", "music", "paper", "green", "cloud", "table", "window", "garden",
         "silver", "market", "winter", "horse", "ocean", "bread", "forest", "engine", "letter", "doctor",
         "summer", "bottle", "castle", "pocket", "animal", "circle", "mirror", "planet"]
DOC_WORDS = ["the input", "a number", "the target", "some text", "the value", "an object", "the list"]


def _ioi(rng: random.Random) -> dict:
    a, b, c, d = rng.sample(NAMES, 4)
    t = rng.choice(IOI_TEMPLATES)
    fill = {"P": rng.choice(PLACES), "O": rng.choice(OBJECTS)}
    clean = t.format(A=a, B=b, **fill)
    # the first clause's names become C, D; the last mention of B stays: nobody is "the other one"
    i = t.rfind("{B}")
    corrupt = (t[:i] + b + t[i + 3:]).format(A=c, B=d, **fill)
    return {"task": "ioi", "clean": clean, "corrupt": corrupt, "answers": [" " + a], "distractors": [" " + b]}


def _greater_than(rng: random.Random) -> dict:
    century = rng.choice(["12", "13", "14", "15", "16", "17", "18"])
    tens = rng.randint(2, 8)
    yy = f"{tens}{rng.randint(0, 9)}"
    t = rng.choice(GT_TEMPLATES)
    noun = rng.choice(NOUNS)
    clean = t.format(N=noun, C=century, Y=yy)
    corrupt = t.format(N=noun, C=century, Y="01")
    return {"task": "greater_than", "clean": clean, "corrupt": corrupt,
            "answers": [str(d) for d in range(tens + 1, 10)], "distractors": [str(d) for d in range(0, tens)]}


def _docstring(rng: random.Random) -> dict:
    args = rng.sample(ARGS, 8)
    real, other = args[:4], args[4:]
    fn = rng.choice(FUNCS)
    d1, d2 = rng.sample(DOC_WORDS, 2)

    def prompt(sig):
        return (f"def {fn}(self, {', '.join(sig)}):\n    \"\"\"{fn.capitalize()} the {rng_word}.\n\n"
                f"    :param {real[0]}: {d1}\n    :param {real[1]}: {d2}\n    :param")

    rng_word = rng.choice(WORDS[2:])
    clean = prompt(real)
    corrupt = prompt([real[0], real[1], other[0], other[1]])
    return {"task": "docstring", "clean": clean, "corrupt": corrupt,
            "answers": [" " + real[2]], "distractors": [" " + real[3]]}


def _induction(rng: random.Random) -> dict:
    words = rng.sample(WORDS[1:], 7)
    seq, swap = words[:6], words[6]
    clean = " " + " ".join(seq) + ". " + " ".join(seq[:3])
    bad = seq[:3] + [swap] + seq[4:]
    corrupt = " " + " ".join(bad) + ". " + " ".join(seq[:3])
    return {"task": "induction", "clean": clean.strip(), "corrupt": corrupt.strip(),
            "answers": [" " + seq[3]], "distractors": [" " + swap]}


COLORS = ["red", "blue", "green", "yellow", "white", "black", "brown", "pink", "purple", "gray"]
THINGS = ["pen", "car", "cup", "hat", "ball", "box", "shirt", "chair", "bag", "door", "book", "lamp", "bike", "kite"]
LETTERS = "ABCD"


def _mcqa(rng: random.Random) -> dict:
    thing = rng.choice(THINGS)
    opts = rng.sample(COLORS, 4)
    right = opts[0]
    clean_opts = rng.sample(opts, 4)
    pos = clean_opts.index(right)
    other = rng.choice([i for i in range(4) if i != pos])
    corrupt_opts = clean_opts.copy()
    corrupt_opts[pos], corrupt_opts[other] = corrupt_opts[other], corrupt_opts[pos]

    def prompt(o):
        lines = "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(o))
        return f"The {thing} is {right}. What color is the {thing}?{lines}\nAnswer:"

    return {"task": "mcqa", "clean": prompt(clean_opts), "corrupt": prompt(corrupt_opts),
            "answers": [" " + LETTERS[pos]], "distractors": [" " + LETTERS[other]]}


def _arithmetic(rng: random.Random) -> dict:
    shots = []
    for _ in range(2):
        x, y = rng.randint(0, 4), rng.randint(0, 4)
        shots.append(f"{x}+{y}={x + y}\n")
    a = rng.randint(0, 8)
    b, b2 = rng.sample(range(0, 10 - a), 2)
    head = "".join(shots)
    return {"task": "arithmetic", "clean": f"{head}{a}+{b}=", "corrupt": f"{head}{a}+{b2}=",
            "answers": [str(a + b)], "distractors": [str(a + b2)]}


MAKERS = {"ioi": _ioi, "greater_than": _greater_than, "docstring": _docstring, "induction": _induction,
          "mcqa": _mcqa, "arithmetic": _arithmetic}


def _ok(tok, rec: dict) -> bool:
    def ids(s):
        return tok(s, add_special_tokens=False)["input_ids"]

    if len(ids(rec["clean"])) != len(ids(rec["corrupt"])):
        return False
    return all(len(ids(w)) == 1 for w in rec["answers"] + rec["distractors"])


def items(tok, n: int = N_PER_TASK) -> dict[str, list[dict]]:
    """``n`` valid records per task (equal token lengths, single-token answers), fixed seed."""
    out = {}
    for name, make in MAKERS.items():
        rng = random.Random(f"{SEED}-{name}")
        recs, seen = [], set()
        for _ in range(50 * n):
            r = make(rng)
            if r["clean"] in seen or not _ok(tok, r):
                continue
            seen.add(r["clean"])
            recs.append(r)
            if len(recs) == n:
                break
        out[name] = recs
    return out


def write(tok, root: Path, names=None) -> list[Path]:
    paths = []
    for name, recs in items(tok).items():
        if names and name not in names:
            continue
        p = root / "tasks" / f"circuit_{name}.jsonl"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
        paths.append(p)
    return paths


if __name__ == "__main__":  # python -m mechscope.data.circuit_tasks  (then data/build.py --checksums-only)
    from mechscope.probes.models import load

    tok = load("smollm2-135m").model.tokenizer
    for p in write(tok, Path(__file__).resolve().parent):
        print(p, sum(1 for _ in p.open()))
