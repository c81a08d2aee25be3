"""The Result protocol shared by every analysis.

A Result is a frozen dataclass that records every parameter that produced it (``params``)
and the model id, so a saved result can be re-run. It offers ``to_frame()`` (a tidy pandas
table), ``figures()`` (named Plotly figures) and ``save(dir)`` / ``Result.load(dir)``.

On disk: ``result.json`` (type, model id, params, scalar fields), ``arrays.safetensors``
(every numpy array / torch tensor, wherever it sits in the fields) and one parquet file per
DataFrame field. Nothing is pickled. ``save`` writes into a temporary folder and renames it
into place, so an interrupted save never leaves a half-written result.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from probes.errors import InputError

FORMAT_VERSION = 1
_TYPES: dict[str, type["Result"]] = {}
_TRUSTED_MODULES = ("probes.", "analyses.", "saes.", "app.", "tests.", "benchmarks.")


@dataclasses.dataclass(frozen=True)
class Result:
    model_id: str
    params: dict

    kind: ClassVar[str] = "result"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _TYPES[_type_name(cls)] = cls

    # -- views ---------------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        raise NotImplementedError

    def figures(self) -> dict[str, Any]:
        """Named Plotly figures; the first is the main one."""
        return {}

    def figure(self, name: str | None = None):
        figs = self.figures()
        if not figs:
            raise InputError(f"{type(self).__name__} has no figures.")
        if name is None:
            return next(iter(figs.values()))
        if name not in figs:
            raise InputError(f"No figure {name!r}; this result has {', '.join(figs)}.")
        return figs[name]

    # -- persistence ---------------------------------------------------------------------
    def save(self, directory: str | Path, html: bool = False) -> Path:
        """Write the result to ``directory`` (replaced atomically). With ``html=True`` also
        write each figure as a standalone HTML file and the table as CSV."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            arrays: dict[str, torch.Tensor] = {}
            frames: dict[str, pd.DataFrame] = {}
            fields = {
                f.name: _encode(getattr(self, f.name), f.name, arrays, frames)
                for f in dataclasses.fields(self)
            }
            doc = {"type": _type_name(type(self)), "format": FORMAT_VERSION, "fields": fields}
            (tmp / "result.json").write_text(json.dumps(doc, indent=1, allow_nan=True))
            if arrays:
                from safetensors.torch import save_file

                save_file({k: v.contiguous() for k, v in arrays.items()}, str(tmp / "arrays.safetensors"))
            for key, frame in frames.items():
                frame.to_parquet(tmp / f"{key}.parquet")
            if html:
                for name, fig in self.figures().items():
                    fig.write_html(tmp / f"{_safe(name)}.html", include_plotlyjs="cdn")
                try:
                    self.to_frame().to_csv(tmp / "table.csv", index=False)
                except NotImplementedError:
                    pass
            if directory.exists():
                old = directory.with_name(f".{directory.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                directory.rename(old)
                tmp.rename(directory)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return directory

    @staticmethod
    def load(directory: str | Path) -> "Result":
        directory = Path(directory)
        meta = directory / "result.json"
        if not meta.is_file():
            raise InputError(f"{directory} holds no saved result (result.json is missing).")
        try:
            doc = json.loads(meta.read_text())
            cls = _resolve_type(doc["type"])
            arrays = {}
            if (directory / "arrays.safetensors").is_file():
                from safetensors.torch import load_file

                arrays = load_file(str(directory / "arrays.safetensors"))
            values = {k: _decode(v, arrays, directory) for k, v in doc["fields"].items()}
            return cls(**values)
        except InputError:
            raise
        except Exception as exc:  # corrupted or foreign files
            raise InputError(f"Cannot read the result in {directory}: {type(exc).__name__}: {exc}".splitlines()[0]) from None


def _type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve_type(name: str) -> type[Result]:
    if name not in _TYPES:
        module = name.split(":")[0]
        if not (module + ".").startswith(_TRUSTED_MODULES):
            raise InputError(f"Refusing to load a result of foreign type {name!r}.")
        importlib.import_module(module)
    if name not in _TYPES:
        raise InputError(f"Unknown result type {name!r}.")
    return _TYPES[name]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _encode(value, path: str, arrays: dict, frames: dict):
    if isinstance(value, torch.Tensor):
        arrays[path] = value.detach().cpu()
        return {"$tensor": path}
    if isinstance(value, np.ndarray):
        if value.dtype == object or value.dtype.kind in "USO":
            return {"$strarray": value.tolist()}
        arrays[path] = torch.from_numpy(np.ascontiguousarray(value))
        return {"$ndarray": path}
    if isinstance(value, pd.DataFrame):
        key = _safe(path)
        frames[key] = value
        return {"$frame": key}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, f"{path}.{i}", arrays, frames) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{path}.{i}", arrays, frames) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return {"$items": [[_encode(k, f"{path}.k{i}", arrays, frames), _encode(v, f"{path}.v{i}", arrays, frames)]
                               for i, (k, v) in enumerate(value.items())]}
        return {"$dict": {k: _encode(v, f"{path}.{k}", arrays, frames) for k, v in value.items()}}
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if dataclasses.is_dataclass(value):
        return {"$dataclass": _type_name(type(value)),
                "fields": {f.name: _encode(getattr(value, f.name), f"{path}.{f.name}", arrays, frames)
                           for f in dataclasses.fields(value)}}
    raise TypeError(f"Cannot save a value of type {type(value).__name__} at {path}.")


def _decode(value, arrays: dict, directory: Path):
    if isinstance(value, list):
        return [_decode(v, arrays, directory) for v in value]
    if not isinstance(value, dict):
        return value
    if "$tensor" in value:
        return arrays[value["$tensor"]]
    if "$ndarray" in value:
        return arrays[value["$ndarray"]].numpy()
    if "$strarray" in value:
        return np.array(value["$strarray"], dtype=object)
    if "$frame" in value:
        return pd.read_parquet(directory / f"{value['$frame']}.parquet")
    if "$tuple" in value:
        return tuple(_decode(v, arrays, directory) for v in value["$tuple"])
    if "$dict" in value:
        return {k: _decode(v, arrays, directory) for k, v in value["$dict"].items()}
    if "$items" in value:
        return {_decode(k, arrays, directory): _decode(v, arrays, directory) for k, v in value["$items"]}
    if "$dataclass" in value:
        module, qual = value["$dataclass"].split(":")
        if not (module + ".").startswith(_TRUSTED_MODULES):
            raise InputError(f"Refusing to load foreign type {value['$dataclass']!r}.")
        obj = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
        return obj(**{k: _decode(v, arrays, directory) for k, v in value["fields"].items()})
    raise TypeError(f"Unrecognised saved value {value!r}")
