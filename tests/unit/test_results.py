"""Result: frozen, exact save/load round trip without pickle, refuses foreign types, atomic."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from mechscope.probes.errors import InputError
from mechscope.probes.interventions import HeadMask
from mechscope.probes.results import Result


@dataclasses.dataclass(frozen=True)
class ToyResult(Result):
    kind = "test_toy"

    scores: np.ndarray
    counts: np.ndarray
    acts: torch.Tensor
    table: pd.DataFrame
    nested: dict
    labels: np.ndarray
    pair: tuple
    note: str = ""

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"layer": np.arange(len(self.scores)), "score": self.scores})

    def figures(self):
        return {"scores": go.Figure(go.Bar(y=self.scores.tolist())), "acts map": go.Figure(go.Heatmap(z=self.acts.tolist()))}


def _toy(seed=0, note="first") -> ToyResult:
    rng = np.random.default_rng(seed)
    return ToyResult(
        model_id="tiny",
        params={"layers": [0, 1, 2], "prompt": "héllo ☃", "threshold": 0.25, "flags": {"bos": True}, "none": None},
        scores=rng.normal(size=5).astype(np.float32),
        counts=rng.integers(0, 100, size=(2, 3)),
        acts=torch.randn(3, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64),
        table=pd.DataFrame({"head": [0, 1, 2], "name": ["a", "b", "c"], "value": [0.5, np.nan, -1.0]}),
        nested={"per_layer": (np.arange(3, dtype=np.int16), {"deep": torch.ones(2, dtype=torch.bfloat16)}),
                "items": [1, "two", 3.0, None], 7: "int key", "mask": HeadMask(1, 2, "zero")},
        labels=np.array(["x", "yy", "zzz"], dtype=object),
        pair=(1, ("a", 2.5)),
        note=note,
    )


def _assert_same(a: ToyResult, b: ToyResult) -> None:
    assert type(b) is ToyResult and b.model_id == a.model_id and b.params == a.params and b.note == a.note
    assert b.scores.dtype == a.scores.dtype and np.array_equal(b.scores, a.scores)
    assert b.counts.dtype == a.counts.dtype and np.array_equal(b.counts, a.counts)
    assert b.acts.dtype == a.acts.dtype and torch.equal(b.acts, a.acts)
    pd.testing.assert_frame_equal(b.table, a.table)
    arr, inner = b.nested["per_layer"]
    assert isinstance(b.nested["per_layer"], tuple) and arr.dtype == np.int16 and np.array_equal(arr, np.arange(3))
    assert inner["deep"].dtype == torch.bfloat16 and torch.equal(inner["deep"], torch.ones(2, dtype=torch.bfloat16))
    assert b.nested["items"] == [1, "two", 3.0, None] and b.nested[7] == "int key"
    assert b.nested["mask"] == HeadMask(1, 2, "zero")
    assert list(b.labels) == ["x", "yy", "zzz"]
    assert b.pair == (1, ("a", 2.5)) and isinstance(b.pair[1], tuple)


def test_round_trip_is_exact(tmp_path):
    r = _toy()
    out = r.save(tmp_path / "res")
    assert out == tmp_path / "res"
    _assert_same(r, Result.load(out))
    files = {p.name for p in out.iterdir()}
    assert "result.json" in files and "arrays.safetensors" in files and any(f.endswith(".parquet") for f in files)
    assert not any(f.endswith((".pkl", ".pickle", ".pt")) for f in files)


def test_frozen_views_and_html(tmp_path):
    r = _toy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.note = "changed"  # type: ignore[misc]
    assert list(r.to_frame().columns) == ["layer", "score"] and len(r.to_frame()) == 5
    assert isinstance(r.figure(), go.Figure) and r.figure("acts map") is not None
    with pytest.raises(InputError, match="No figure"):
        r.figure("nope")
    out = r.save(tmp_path / "res", html=True)
    assert (out / "scores.html").is_file() and (out / "acts_map.html").is_file()
    assert pd.read_csv(out / "table.csv")["score"].tolist() == pytest.approx(r.scores.tolist())


def test_saved_figures_are_offline(tmp_path):
    """No saved file names a network resource: plotly.js sits in the folder, once."""
    import re

    out = _toy().save(tmp_path / "res", html=True)
    js = out / "plotly.min.js"
    assert js.is_file() and js.stat().st_size > 1_000_000
    for page in ("scores.html", "acts_map.html"):
        text = (out / page).read_text()
        assert '<script src="plotly.min.js"></script>' in text and "Plotly.newPlot" in text
    for f in out.iterdir():
        text = f.read_bytes().decode("utf-8", errors="replace")
        assert "https://" not in text and "cdn" not in text, f.name
        # the only http:// left are XML namespace names (identifiers that are never fetched)
        assert {m for m in re.findall(r"http://[^\s\"'`)<>]*", text) if not m.startswith("http://www.w3.org/")} == set(), f.name


def test_load_refuses_foreign_types(tmp_path):
    r = _toy()
    out = r.save(tmp_path / "res")
    doc = json.loads((out / "result.json").read_text())
    assert doc["type"] == "test_toy"
    for bad in ("os:system", "subprocess:Popen", "builtins:eval", "os", "tests.unit.test_results:ToyResult"):
        (out / "result.json").write_text(json.dumps({**doc, "type": bad}))
        with pytest.raises(InputError, match="Unknown result kind"):
            Result.load(out)
    text = json.dumps(doc)
    assert '"kind": "head_mask", "family": "intervention"' in text
    for bad in ('"kind": "os", "family": "intervention"', '"kind": "system", "family": "intervention"'):
        (out / "result.json").write_text(text.replace('"kind": "head_mask", "family": "intervention"', bad))
        with pytest.raises(InputError, match="Unknown intervention"):
            Result.load(out)


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(InputError, match="no saved result"):
        Result.load(tmp_path / "absent")
    out = _toy().save(tmp_path / "res")
    (out / "result.json").write_text("{broken")
    with pytest.raises(InputError) as exc:
        Result.load(out)
    assert "\n" not in str(exc.value)


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir())


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    first = _toy(0, "first")
    first.save(tmp_path / "res")
    before = _siblings(tmp_path / "res")
    calls = []

    def failing_to_parquet(self, *args, **kwargs):  # fails after the arrays were written
        calls.append(1)
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", failing_to_parquet)
    with pytest.raises(OSError, match="disk full"):
        _toy(1, "second").save(tmp_path / "res")
    assert calls
    assert _siblings(tmp_path / "res") == before  # no temporary folder left behind
    _assert_same(first, Result.load(tmp_path / "res"))  # the old result is intact
    with pytest.raises(OSError):
        _toy(1, "second").save(tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists() and _siblings(tmp_path / "res") == before
    monkeypatch.undo()
    _toy(1, "second").save(tmp_path / "res")
    assert Result.load(tmp_path / "res").note == "second"
    assert _siblings(tmp_path / "res") == before  # replaced in place, old copy removed


def test_save_never_replaces_a_users_folder_or_file(tmp_path):
    """Saving over a folder that is not a saved result (or a result plus the user's own files),
    or over a file, is refused and touches nothing."""
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("years of work")
    with pytest.raises(InputError, match="holds no saved result"):
        _toy().save(thesis)
    assert (thesis / "chapter1.tex").read_text() == "years of work" and len(list(thesis.iterdir())) == 1

    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(InputError, match="not a folder"):
        _toy().save(notes)
    assert notes.read_text() == "mine"

    res = _toy(0, "first").save(tmp_path / "res")
    (res / "my_notes.md").write_text("keep me")
    with pytest.raises(InputError, match="other files"):
        _toy(1, "second").save(res)
    assert (res / "my_notes.md").read_text() == "keep me" and Result.load(res).note == "first"

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "result.json").write_text('{"name": "not ours"}')
    with pytest.raises(InputError, match="holds no saved result"):
        _toy().save(foreign)
    assert (foreign / "result.json").read_text() == '{"name": "not ours"}'


def test_save_leaves_a_users_dot_old_folder_alone(tmp_path):
    """Replacing a saved result never touches a sibling the user made (the old code used a fixed
    '.NAME.old' name and deleted it)."""
    _toy(0, "first").save(tmp_path / "res")
    mine = tmp_path / ".res.old"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    _toy(1, "second").save(tmp_path / "res")
    assert (mine / "keep.txt").read_text() == "mine" and Result.load(tmp_path / "res").note == "second"
