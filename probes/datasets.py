"""The shipped data sets: text sets, long texts and tasks, each checked against its sha256.

Layout of the data folder (see ``data/README.md``; ``data/build.py`` regenerates it):

* ``texts/<name>.jsonl`` — records ``{"text", "domain", "source"}``; sets ``prose``,
  ``code``, ``numbers`` (96 texts each, 100–400 SmolLM2 tokens) and the virtual ``mixed``
  (all of them, interleaved prose, code, numbers, prose, … so any prefix is balanced).
* ``long/<name>.txt`` — one continuous text (``paradise_lost``: ≥ 20k tokens) for
  streaming-perplexity runs (Xiao et al. 2023).
* ``tasks/<name>.jsonl`` — items ``{"prompt", "answer", "choices", "split", "category"}``;
  ``act_calibration`` serves the ACT head search (Yu et al. 2024).

The folder is ``data/`` next to this package unless the environment variable
``MECHSCOPE_DATA`` names another; every function also takes ``data_dir=``. Every call re-reads
the file and checks its sha256 against ``checksums.json`` (about 1 ms for the whole folder),
so a file changed on disk is never served from memory; decoding and parsing are cached
(``functools.lru_cache``, keyed on the verified content). Callers get private copies.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from pathlib import Path

from mechscope.probes.errors import ChecksumError, InputError

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
ENV_VAR = "MECHSCOPE_DATA"
MIXED = "mixed"
DOMAINS = ("prose", "code", "numbers")  # the order in which ``mixed`` interleaves
SPLITS = ("calib", "heldout")


def resolve_data_dir(override: str | os.PathLike | None = None) -> Path:
    """The data folder: ``override``, else ``$MECHSCOPE_DATA``, else the repository's ``data/``."""
    if override is not None:
        return Path(override)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_DATA_DIR


DATA_DIR = resolve_data_dir()  # the folder in force at import time; functions re-read the environment


# ---------------------------------------------------------------------------------------
# verified, cached reads


def _names(root: Path, sub: str, suffix: str) -> list[str]:
    folder = root / sub
    return sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}")) if folder.is_dir() else []


def _path(root: Path, sub: str, name: str, suffix: str, kind: str, extra: tuple[str, ...] = ()) -> Path:
    valid = sorted(set(_names(root, sub, suffix)) | set(extra))
    if not isinstance(name, str) or name not in valid:
        raise InputError(f"Unknown {kind} {name!r}: use one of {', '.join(valid) or '(none found in ' + str(root) + ')'}.")
    return root / sub / f"{name}{suffix}"


def _read_verified(root: Path, path: Path) -> str:
    """The file's text after checking its sha256 against ``root/checksums.json`` (every call)."""
    rel = path.relative_to(root).as_posix()
    expected = _checksums(root).get(rel)
    if expected is None:
        raise ChecksumError(f"{rel} has no entry in {root / 'checksums.json'}; run data/build.py --checksums-only.")
    raw = path.read_bytes()
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected:
        raise ChecksumError(f"Data file {path} is corrupted: sha256 {actual[:12]}… does not match the recorded {expected[:12]}….")
    return _decode(raw)


@functools.lru_cache(maxsize=32)
def _decode(raw: bytes) -> str:
    return raw.decode("utf-8")


def _checksums(root: Path) -> dict:
    sums = root / "checksums.json"
    try:
        table = json.loads(sums.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ChecksumError(f"{sums} is missing: cannot verify the data; run data/build.py --checksums-only.") from None
    except ValueError:
        raise ChecksumError(f"{sums} is not a valid checksum file.") from None
    if not isinstance(table, dict):
        raise ChecksumError(f"{sums} is not a valid checksum file.")
    return {str(k): str(v) for k, v in table.items()}


def _jsonl(root: Path, path: Path) -> tuple[dict, ...]:
    return _parse_jsonl(_read_verified(root, path))


@functools.lru_cache(maxsize=32)
def _parse_jsonl(text: str) -> tuple[dict, ...]:
    return tuple(json.loads(line) for line in text.splitlines() if line.strip())


# ---------------------------------------------------------------------------------------
# text sets


def text_sets(data_dir: str | os.PathLike | None = None) -> list[str]:
    """Names accepted by :func:`load_texts` (the stored sets plus ``mixed``)."""
    names = _names(resolve_data_dir(data_dir), "texts", ".jsonl")
    return sorted(names + [MIXED]) if names else []


def load_records(name: str, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """Records ``{"text", "domain", "source"}`` of a text set (``mixed`` = all, interleaved)."""
    root = resolve_data_dir(data_dir)
    if name == MIXED:
        _path(root, "texts", name, ".jsonl", "text set", extra=(MIXED,))
        stored = _names(root, "texts", ".jsonl")
        order = [d for d in DOMAINS if d in stored] + [d for d in stored if d not in DOMAINS]
        groups = [_jsonl(root, root / "texts" / f"{d}.jsonl") for d in order]
        rows = [g[i] for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]
    else:
        rows = list(_jsonl(root, _path(root, "texts", name, ".jsonl", "text set", extra=(MIXED,))))
    return [dict(r) for r in rows]


def load_texts(name: str, data_dir: str | os.PathLike | None = None) -> list[str]:
    """The texts of a text set, in file order (``mixed``: interleaved by domain)."""
    return [r["text"] for r in load_records(name, data_dir)]


# ---------------------------------------------------------------------------------------
# long texts and tasks


def long_texts(data_dir: str | os.PathLike | None = None) -> list[str]:
    return _names(resolve_data_dir(data_dir), "long", ".txt")


def load_long_text(name: str = "paradise_lost", data_dir: str | os.PathLike | None = None) -> str:
    """One continuous public-domain text (``paradise_lost``: Books I–III, ≈31.5k SmolLM2 tokens)."""
    root = resolve_data_dir(data_dir)
    return _read_verified(root, _path(root, "long", name, ".txt", "long text"))


def tasks(data_dir: str | os.PathLike | None = None) -> list[str]:
    return _names(resolve_data_dir(data_dir), "tasks", ".jsonl")


def load_task(name: str, split: str | None = None, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """Task items ``{"prompt", "answer", "choices", "split", "category"}``; ``split`` filters."""
    if split is not None and split not in SPLITS:
        raise InputError(f"Unknown split {split!r}: use one of {', '.join(SPLITS)} (or None for all).")
    root = resolve_data_dir(data_dir)
    items = _jsonl(root, _path(root, "tasks", name, ".jsonl", "task"))
    return [copy.deepcopy(it) for it in items if split is None or it.get("split") == split]
