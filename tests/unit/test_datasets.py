"""probes.datasets: every shipped file loads and verifies; tampering and bad names fail cleanly."""

import json
import shutil

import pytest

from mechscope.probes import datasets
from mechscope.probes.errors import ChecksumError, InputError


@pytest.fixture
def data_copy(tmp_path):
    """A private copy of the shipped data folder (to tamper with)."""
    dst = tmp_path / "data"
    shutil.copytree(datasets.DEFAULT_DATA_DIR, dst, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return dst


def test_every_set_loads_with_expected_shape():
    assert datasets.text_sets() == ["code", "mixed", "numbers", "prose"]
    for name in ("prose", "code", "numbers"):
        recs = datasets.load_records(name)
        assert 90 <= len(recs) <= 110
        assert {r["domain"] for r in recs} == {name}
        assert all(r["text"].strip() and r["source"] for r in recs)
        assert len({r["text"] for r in recs}) == len(recs)  # no duplicates
    mixed = datasets.load_records("mixed")
    sizes = [len(datasets.load_texts(d)) for d in ("prose", "code", "numbers")]
    assert len(mixed) == sum(sizes)
    # interleaved: the first three are one of each domain, in the documented order
    assert [r["domain"] for r in mixed[:6]] == ["prose", "code", "numbers"] * 2
    assert sorted(r["text"] for r in mixed) == sorted(t for d in ("prose", "code", "numbers") for t in datasets.load_texts(d))


def test_long_text_and_task_load():
    text = datasets.load_long_text()
    assert text.startswith("PARADISE LOST") and "BOOK III." in text and len(text) > 80_000
    items = datasets.load_task("act_calibration")
    assert len(items) >= 150
    for it in items:
        assert it["split"] in ("calib", "heldout")
        assert len(it["choices"]) == 3 and len(set(it["choices"])) == 3 and it["answer"] in it["choices"]
        assert it["answer"].startswith(" ") and not it["prompt"].endswith(" ")
    calib, held = datasets.load_task("act_calibration", "calib"), datasets.load_task("act_calibration", "heldout")
    assert len(calib) + len(held) == len(items) and calib and held
    assert all(it["split"] == "calib" for it in calib)
    assert not {it["prompt"] for it in calib} & {it["prompt"] for it in held}


def test_loads_return_private_copies():
    a = datasets.load_task("act_calibration")
    a[0]["choices"].append(" mutated")
    assert " mutated" not in datasets.load_task("act_calibration")[0]["choices"]
    r = datasets.load_records("prose")
    r[0]["text"] = "mutated"
    assert datasets.load_records("prose")[0]["text"] != "mutated"


def test_checksums_cover_every_data_file():
    sums = json.loads((datasets.DEFAULT_DATA_DIR / "checksums.json").read_text())
    files = {p.relative_to(datasets.DEFAULT_DATA_DIR).as_posix() for sub in ("texts", "long", "tasks")
             for p in (datasets.DEFAULT_DATA_DIR / sub).iterdir()}
    assert files <= set(sums)


def test_copy_verifies_and_env_var_points_there(data_copy, monkeypatch):
    monkeypatch.setenv(datasets.ENV_VAR, str(data_copy))
    assert datasets.resolve_data_dir() == data_copy
    assert datasets.load_texts("code") == datasets.load_texts("code", data_dir=datasets.DEFAULT_DATA_DIR)


@pytest.mark.parametrize("rel,load", [
    ("texts/prose.jsonl", lambda d: datasets.load_texts("prose", data_dir=d)),
    ("texts/numbers.jsonl", lambda d: datasets.load_texts("mixed", data_dir=d)),
    ("long/paradise_lost.txt", lambda d: datasets.load_long_text(data_dir=d)),
    ("tasks/act_calibration.jsonl", lambda d: datasets.load_task("act_calibration", "calib", data_dir=d)),
])
def test_tampered_file_raises_checksum_error(data_copy, rel, load):
    load(data_copy)  # intact copy verifies (and is now cached)
    path = data_copy / rel
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] = ord("7") if raw[len(raw) // 2] != ord("7") else ord("8")  # one byte, same length
    path.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match="corrupted") as exc:
        load(data_copy)
    assert "\n" not in str(exc.value)


def test_tampered_via_env_var(data_copy, monkeypatch):
    with open(data_copy / "texts" / "code.jsonl", "a") as f:
        f.write('{"text": "x", "domain": "code", "source": "intruder"}\n')
    monkeypatch.setenv(datasets.ENV_VAR, str(data_copy))
    with pytest.raises(ChecksumError):
        datasets.load_texts("code")


def test_missing_or_unlisted_checksum(data_copy):
    sums = json.loads((data_copy / "checksums.json").read_text())
    del sums["texts/code.jsonl"]
    (data_copy / "checksums.json").write_text(json.dumps(sums))
    with pytest.raises(ChecksumError, match="no entry"):
        datasets.load_texts("code", data_dir=data_copy)
    (data_copy / "checksums.json").unlink()
    with pytest.raises(ChecksumError, match="missing"):
        datasets.load_texts("prose", data_dir=data_copy)


def test_unknown_names_list_valid_ones():
    with pytest.raises(InputError, match="code, mixed, numbers, prose"):
        datasets.load_texts("poetry")
    with pytest.raises(InputError, match="paradise_lost"):
        datasets.load_long_text("moby_dick")
    with pytest.raises(InputError, match="act_calibration"):
        datasets.load_task("nope")
    with pytest.raises(InputError, match="calib, heldout"):
        datasets.load_task("act_calibration", split="train")
    with pytest.raises(InputError):
        datasets.load_texts("../long/paradise_lost")

