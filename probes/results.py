"""The Result protocol shared by every analysis.

A Result is a frozen dataclass that records every parameter that produced it (``params``)
and the model id, so a saved result can be re-run. It offers ``to_frame()`` (a tidy pandas
table), ``figures()`` (named Plotly figures) and ``save(dir)`` / ``Result.load(dir)``.

On disk: ``result.json`` (kind, model id, params, scalar fields), ``arrays.safetensors``
(every numpy array / torch tensor, wherever it sits in the fields) and one parquet file per
DataFrame field. Nothing is pickled. ``save`` writes into a temporary folder and renames it
into place, so an interrupted save never leaves a half-written result. Figures saved as HTML
share one offline copy of plotly.js in the folder (``plotly.min.js``, with the URLs it would
use for map tiles removed): a saved result names no network resource.

Parameters are typed: every analysis has a frozen :class:`Params` dataclass (its defaults
are the CLI's and the dashboard's defaults) and is registered with :func:`analysis`, so
``Result.rerun(model)`` — and ``mechscope rerun DIR`` — reproduce a saved result. Loading
resolves result kinds, parameter kinds and nested objects through registries only: a
``result.json`` can name nothing but known kinds, never a module to import.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

import numpy as np
import pandas as pd
import torch

from mechscope.probes.errors import InputError
from mechscope.probes.serial import Registry, build, encode, to_dict

FORMAT_VERSION = 2
_TYPES: dict[str, type["Result"]] = {}  # result kind -> class

#: every analysis' parameter class, by analysis kind
PARAMS = Registry("params")
#: plain record dataclasses that results embed (rows of a table, one generation, ...)
RECORDS = Registry("record")
#: analysis kind -> the registered analysis function ``fn(model, params, **runtime)``
ANALYSES: dict[str, Callable] = {}

P = TypeVar("P", bound="Params")


@dataclasses.dataclass(frozen=True)
class Params:
    """Base of every analysis' parameters: a frozen dataclass of plain values (and
    registered objects such as interventions). Subclasses may validate in
    ``__post_init__`` (raise :class:`InputError`)."""

    def to_dict(self) -> dict:
        return to_dict(self)

    def replace(self: P, **changes) -> P:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise InputError(f"{type(self).__name__} has no parameter(s) {', '.join(sorted(unknown))}.")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls: type[P], data: dict) -> P:
        return PARAMS.from_dict(data)

    @classmethod
    def help(cls, name: str) -> str:
        for f in dataclasses.fields(cls):
            if f.name == name:
                return f.metadata.get("help", "")
        raise KeyError(name)


def analysis(params_cls: type[P], kind: str | None = None):
    """Register ``fn(model, params, **runtime)`` as the analysis that consumes
    ``params_cls`` (registered under ``kind``, default ``params_cls.kind``).

    The wrapped function accepts ``params`` (a ``params_cls`` or None for the defaults),
    positional values for the leading fields (``fn(model, "a prompt")``) and keyword
    overrides of any field (``fn(model, n_texts=8)``); other keywords (``progress=``) pass
    through unchanged to ``fn(model, params, **runtime)``.
    """
    k = kind or getattr(params_cls, "kind", None)
    if not k:
        raise ValueError(f"{params_cls.__name__} needs a kind.")
    PARAMS.register(k)(params_cls)
    field_names = {f.name for f in dataclasses.fields(params_cls)}

    def deco(fn):
        fields = [f.name for f in dataclasses.fields(params_cls) if f.init and not f.kw_only]
        import inspect

        sig = inspect.signature(fn).parameters
        takes_progress = "progress" in sig or any(p.kind is p.VAR_KEYWORD for p in sig.values())

        @functools.wraps(fn)
        def wrapper(model, *args, **kwargs):
            params = None
            if args and isinstance(args[0], params_cls):
                params, args = args[0], args[1:]
            elif args and args[0] is None:
                args = args[1:]
            if args:  # positional shortcuts for the leading fields: fn(model, prompt, layer, head)
                if len(args) > len(fields):
                    raise InputError(f"{fn.__name__} takes at most {len(fields)} positional parameters.")
                for name, value in zip(fields, args):
                    if name in kwargs:
                        raise InputError(f"{fn.__name__} got {name!r} twice.")
                    kwargs[name] = value
            if "params" in kwargs:
                params = kwargs.pop("params")
            overrides = {n: kwargs.pop(n) for n in list(kwargs) if n in field_names}
            if params is None:
                params = params_cls(**overrides)
            elif not isinstance(params, params_cls):
                raise InputError(f"{fn.__name__} takes {params_cls.__name__}, not {type(params).__name__}.")
            elif overrides:
                params = params.replace(**overrides)
            if not takes_progress:  # quick analyses take no progress callback
                kwargs.pop("progress", None)
            return fn(model, params, **kwargs)

        wrapper.params_cls = params_cls
        wrapper.kind = k
        ANALYSES[k] = wrapper
        return wrapper

    return deco


def record(kind: str):
    """Class decorator: a plain dataclass that results may embed (saved as data)."""
    return RECORDS.register(kind)


@dataclasses.dataclass(frozen=True)
class Result:
    model_id: str
    params: Any  # the analysis' Params instance

    kind: ClassVar[str] = "result"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind is None:
            return  # an abstract intermediate class
        other = _TYPES.get(kind)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise ValueError(f"Result kind {kind!r} is used by {other.__qualname__} and {cls.__qualname__}.")
        _TYPES[kind] = cls

    # -- re-running ----------------------------------------------------------------------
    def rerun(self, model, **runtime) -> "Result":
        """Run the analysis that produced this result again, with the same parameters."""
        if not isinstance(self.params, Params):
            raise InputError(f"This {type(self).__name__} has no typed parameters and cannot be re-run.")
        fn = ANALYSES.get(type(self.params).kind)
        if fn is None:
            raise InputError(f"No analysis is registered for {type(self.params).kind!r}.")
        return fn(model, self.params, **runtime)

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
        check_replaceable(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            arrays: dict[str, torch.Tensor] = {}
            frames: dict[str, pd.DataFrame] = {}
            fields = {
                f.name: _encode(getattr(self, f.name), f.name, arrays, frames)
                for f in dataclasses.fields(self)
            }
            doc = {"type": self.kind, "format": FORMAT_VERSION, "fields": fields}
            (tmp / "result.json").write_text(json.dumps(doc, indent=1, allow_nan=True))
            if arrays:
                from safetensors.torch import save_file

                save_file({k: v.contiguous() for k, v in arrays.items()}, str(tmp / "arrays.safetensors"))
            for key, frame in frames.items():
                frame.to_parquet(tmp / f"{key}.parquet")
            if html:
                figures = self.figures()
                if figures:
                    (tmp / PLOTLY_JS).write_text(offline_plotlyjs(), encoding="utf-8")
                for name, fig in figures.items():
                    (tmp / f"{_safe(name)}.html").write_text(offline_html(fig), encoding="utf-8")
                try:
                    self.to_frame().to_csv(tmp / "table.csv", index=False)
                except NotImplementedError:
                    pass
            swap_in(tmp, directory)  # a saved result there (checked above) is replaced
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
            if not isinstance(doc, dict) or "type" not in doc or "fields" not in doc:
                raise InputError(f"{meta} is not a saved mechscope result.")
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


def _is_saved_entry(path: Path) -> bool:
    """A file that :meth:`Result.save` writes."""
    return path.is_file() and (path.name in SAVED_FILES or path.suffix in (".parquet", ".html"))


def swap_in(tmp: Path, directory: Path) -> None:
    """Move the finished folder ``tmp`` to ``directory``; an existing ``directory`` (already
    checked as replaceable) is first renamed aside under a fresh name, then removed."""
    if directory.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
        directory.rename(old / "replaced")
        tmp.rename(directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(directory)


def check_replaceable(directory: Path) -> None:
    """Refuse to replace anything but a saved result: a file, or a folder holding anything
    that :meth:`Result.save` did not write, is never deleted (raises :class:`InputError`)."""
    if not directory.exists() and not directory.is_symlink():
        return
    if directory.is_symlink() or not directory.is_dir():
        raise InputError(f"{directory} exists and is not a folder; choose another place to save.")
    entries = list(directory.iterdir())
    if not entries:
        return
    meta = directory / "result.json"
    try:
        doc = json.loads(meta.read_text()) if meta.is_file() else None
    except (OSError, ValueError):
        doc = None
    if not (isinstance(doc, dict) and "type" in doc and "format" in doc and "fields" in doc):
        raise InputError(f"{directory} is a non-empty folder that holds no saved result; choose another.")
    foreign = sorted(e.name for e in entries if not _is_saved_entry(e))
    if foreign:
        raise InputError(f"{directory} holds a saved result and other files ({', '.join(foreign[:3])}); "
                         "choose another folder.")


def result_kinds() -> list[str]:
    return sorted(_TYPES)


def _resolve_type(kind) -> type[Result]:
    """A result class from its kind — only kinds registered by imported analyses.
    (``analyses.catalog.load_result`` imports every analysis module first.)"""
    if not isinstance(kind, str) or kind not in _TYPES:
        raise InputError(
            f"Unknown result kind {kind!r}: this folder was not written by a known mechscope analysis "
            f"(load it with analyses.catalog.load_result, which knows every kind)."
        )
    return _TYPES[kind]


PLOTLY_JS = "plotly.min.js"
SAVED_FILES = frozenset({"result.json", "arrays.safetensors", "table.csv", PLOTLY_JS})
# every URL but XML namespace names (http://www.w3.org/2000/svg ...), which are identifiers, never fetched
_URL_RE = re.compile(r"https?://(?!www\.w3\.org/)[^\s\"'`)<>]*")


@functools.lru_cache(maxsize=1)
def offline_plotlyjs() -> str:
    """plotly.js as bundled with the plotly package, with every URL emptied but XML
    namespace names (the URLs serve only map tiles, map styles, help links and licence
    notes; saved figures use none of them)."""
    from plotly.offline import get_plotlyjs

    return _URL_RE.sub("", get_plotlyjs())


def offline_html(fig) -> str:
    """A figure's standalone HTML that loads plotly.js from the folder it is saved in."""
    html = fig.to_html(include_plotlyjs=False, full_html=True, config={"displaylogo": False})
    return html.replace("<head>", f'<head><meta charset="utf-8" /><script src="{PLOTLY_JS}"></script>', 1)


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
    if dataclasses.is_dataclass(value) and hasattr(type(value), "family"):
        if type(value).family == "record":  # may hold arrays: encode field by field
            return {"$record": type(value).kind,
                    "fields": {f.name: _encode(getattr(value, f.name), f"{path}.{f.name}", arrays, frames)
                               for f in dataclasses.fields(value)}}
        return {"$object": to_dict(value)}
    if dataclasses.is_dataclass(value):
        raise TypeError(f"Cannot save {type(value).__name__} at {path}: register it with probes.results.record(kind).")
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
    if "$record" in value:
        cls = RECORDS.get(value["$record"])
        return build(cls, {k: _decode(v, arrays, directory) for k, v in value["fields"].items()})
    if "$object" in value:
        from mechscope.probes.serial import decode

        return decode(value["$object"])
    raise TypeError(f"Unrecognised saved value {value!r}")
