"""One sha256 of a file (probes.checksums), checked against hashlib on the whole bytes."""

import hashlib

import pytest

from mechscope.probes.checksums import sha256_file, verify_sha256
from mechscope.probes.errors import ChecksumError


def test_sha256_file_matches_hashlib_across_chunks(tmp_path):
    data = bytes(range(256)) * 41 + b"tail"  # not a multiple of the chunk
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert sha256_file(path) == want
    assert sha256_file(str(path), chunk=1000) == want
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_verify_sha256(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"weights")
    verify_sha256(path, hashlib.sha256(b"weights").hexdigest())
    with pytest.raises(ChecksumError, match="corrupted"):
        verify_sha256(path, hashlib.sha256(b"other").hexdigest())
