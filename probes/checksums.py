"""The sha256 of a file, and the check of a file against a pinned digest: weights, SAEs,
whitening files, the SAE corpus and the shipped data are all checked with these."""

from __future__ import annotations

import hashlib
from pathlib import Path

from mechscope.probes.errors import ChecksumError


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 digest of the file at ``path``, read in chunks of ``chunk`` bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise :class:`ChecksumError` unless the weight file at ``path`` has digest ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"Weight file {path} is corrupted: sha256 {actual[:12]}… does not match the expected "
            f"{expected[:12]}…; reinstall its package."
        )
