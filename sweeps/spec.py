"""Sweep specs: a TOML file naming analyses, their parameter grids or lists, models and
(optionally) shards of a text set, expanded into content-keyed :class:`~sweeps.jobs.Job` s.

Every problem in a spec (unknown analysis, unknown or mistyped Params field, unknown model,
bad shard) is found before any job runs and reported as one :class:`SpecError` line.

Format (docs/sweeps.md)::

    models = ["smollm2-135m", { name = "gemma-3-270m" }]   # registry names, or tables
    device = "cpu"                                          # optional

    [texts]                     # optional: shards of a shipped text set
    text_set = "mixed"
    n_texts = 64
    shards = 4                  # or shard_size = 16

    [[analysis]]
    kind = "sinks"                                  # analysis kind or function name
    params = { max_tokens = 32 }                    # fixed overrides for every job
    grid = { eps = [0.1, 0.3], k_max = [4, 8] }     # cartesian product (4 jobs)
    shard_texts = true                              # one job per shard as well

    [[analysis]]
    kind = "next_token"
    list = [{ prompt = "The capital of France is" }, { prompt = "2 + 2 =", k = 3 }]

A model table may name a ``loader = "module:function"``: ``function(device)`` returns a
HookedTransformer (a model outside the registry, e.g. one built in a test); its weights
digest is the sha256 of its parameters.
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from mechscope.probes.errors import InputError


class SpecError(InputError):
    """A sweep spec that cannot run (one line)."""


@dataclass(frozen=True)
class ModelEntry:
    """A model of a sweep: a registry / TransformerLens name, or a custom ``loader``."""

    name: str
    loader: str | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, **({"loader": self.loader} if self.loader else {})}


@dataclass(frozen=True)
class TextShards:
    text_set: str
    n_texts: int | None
    shards: int

    def shard_texts(self) -> list[dict]:
        """Each shard's texts as ``{domain: (text, ...)}`` (file order kept within a domain)."""
        from mechscope.probes.texts import select_texts

        items = select_texts(None, self.text_set, self.n_texts)
        if self.shards > len(items):
            raise SpecError(f"[texts] asks for {self.shards} shards of {len(items)} texts.")
        bounds = [round(i * len(items) / self.shards) for i in range(self.shards + 1)]
        out = []
        for a, b in zip(bounds, bounds[1:]):
            by_domain: dict[str, list] = {}
            for t in items[a:b]:
                by_domain.setdefault(t.domain, []).append(t.text)
            out.append({d: tuple(v) for d, v in by_domain.items()})
        return out


@dataclass(frozen=True)
class AnalysisEntry:
    kind: str
    variants: tuple[dict, ...]  # Params overrides, one per job (before sharding)
    shard_texts: bool = False
    models: tuple[ModelEntry, ...] | None = None


@dataclass(frozen=True)
class SweepSpec:
    analyses: tuple[AnalysisEntry, ...]
    models: tuple[ModelEntry, ...]
    device: str = "cpu"
    texts: TextShards | None = None
    name: str = "sweep"
    source: dict = field(default_factory=dict, compare=False)  # the parsed TOML, as written

    def jobs(self):
        """Every job of the spec, in spec order (analysis, variant, shard, model); each
        Params is built and checked here."""
        from mechscope.sweeps.jobs import make_jobs

        return make_jobs(self)


_TOP = {"models", "device", "texts", "analysis", "name"}
_ANALYSIS = {"kind", "params", "grid", "list", "shard_texts", "models"}


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a TOML spec file (raises :class:`SpecError`)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"Sweep spec {path} does not exist.")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path} is not valid TOML: {exc}".splitlines()[0]) from None
    return parse_spec(data)


def parse_spec(data: dict) -> SweepSpec:
    """A checked :class:`SweepSpec` from parsed TOML (a dict). Builds every job's Params, so
    any unknown or mistyped field is reported now."""
    if not isinstance(data, dict):
        raise SpecError("A sweep spec is a TOML table.")
    unknown = set(data) - _TOP
    if unknown:
        raise SpecError(f"Unknown key(s) in the sweep spec: {', '.join(sorted(unknown))} "
                        f"(known: {', '.join(sorted(_TOP))}).")
    models = _models(data.get("models"), "models")
    device = data.get("device", "cpu")
    if not isinstance(device, str) or not device:
        raise SpecError(f"device must be a string such as 'cpu' or 'cuda', not {device!r}.")
    name = data.get("name", "sweep")
    if not isinstance(name, str):
        raise SpecError("name must be a string.")
    texts = _texts(data.get("texts"))
    raw = data.get("analysis")
    if not raw:
        raise SpecError("The sweep spec names no analysis: add at least one [[analysis]] table.")
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(a, dict) for a in raw):
        raise SpecError("analysis must be a list of tables ([[analysis]]).")
    entries = tuple(_analysis(a, i, texts) for i, a in enumerate(raw))
    if not models and any(e.models is None for e in entries):
        raise SpecError("The sweep spec names no model: set models = [\"smollm2-135m\", ...].")
    spec = SweepSpec(analyses=entries, models=models or (), device=device, texts=texts, name=name, source=data)
    _check_models(spec)
    spec.jobs()  # builds and checks every Params
    return spec


def _models(raw, where: str) -> tuple[ModelEntry, ...] | None:
    if raw is None:
        return None
    if isinstance(raw, (str, dict)):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise SpecError(f"{where} must be a non-empty list of model names or tables.")
    out = []
    for m in raw:
        if isinstance(m, str) and m.strip():
            out.append(ModelEntry(m.strip()))
        elif isinstance(m, dict) and isinstance(m.get("name"), str) and m["name"].strip():
            extra = set(m) - {"name", "loader"}
            if extra:
                raise SpecError(f"Unknown key(s) in a model table of {where}: {', '.join(sorted(extra))}.")
            loader = m.get("loader")
            if loader is not None and (not isinstance(loader, str) or ":" not in loader):
                raise SpecError(f"A model's loader is 'module:function', not {loader!r}.")
            out.append(ModelEntry(m["name"].strip(), loader))
        else:
            raise SpecError(f"{where}: {m!r} is neither a model name nor a table with a name.")
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise SpecError(f"{where} names a model twice.")
    return tuple(out)


def _texts(raw) -> TextShards | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SpecError("[texts] must be a table.")
    extra = set(raw) - {"text_set", "n_texts", "shards", "shard_size"}
    if extra:
        raise SpecError(f"Unknown key(s) in [texts]: {', '.join(sorted(extra))}.")
    from mechscope.probes.texts import select_texts, text_set_names

    text_set = raw.get("text_set", "mixed")
    if text_set not in text_set_names():
        raise SpecError(f"[texts] text_set {text_set!r} is not a shipped text set ({', '.join(text_set_names())}).")
    n = raw.get("n_texts")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise SpecError(f"[texts] n_texts must be a positive integer, not {n!r}.")
    total = len(select_texts(None, text_set, n))
    if ("shards" in raw) == ("shard_size" in raw):
        raise SpecError("[texts] takes one of shards (how many) or shard_size (texts per shard).")
    for key in ("shards", "shard_size"):
        v = raw.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise SpecError(f"[texts] {key} must be a positive integer, not {v!r}.")
    shards = raw["shards"] if "shards" in raw else -(-total // raw["shard_size"])
    if shards > total:
        raise SpecError(f"[texts] asks for {shards} shards of {total} texts.")
    return TextShards(text_set, n, shards)


def _analysis(raw: dict, i: int, texts: TextShards | None) -> AnalysisEntry:
    from mechscope.analyses.catalog import import_all
    from mechscope.probes.results import ANALYSES

    import_all()
    where = f"analysis {i + 1}"
    extra = set(raw) - _ANALYSIS
    if extra:
        raise SpecError(f"Unknown key(s) in {where}: {', '.join(sorted(extra))} (known: {', '.join(sorted(_ANALYSIS))}).")
    kind = raw.get("kind")
    by_fn = {fn.__name__: k for k, fn in ANALYSES.items()}
    if isinstance(kind, str) and kind not in ANALYSES and kind in by_fn:
        kind = by_fn[kind]
    if not isinstance(kind, str) or kind not in ANALYSES:
        raise SpecError(f"{where}: unknown analysis {kind!r}; choose from {', '.join(sorted(ANALYSES))}.")
    where = f"analysis {i + 1} ({kind})"
    fixed = raw.get("params", {})
    grid = raw.get("grid")
    listed = raw.get("list")
    if not isinstance(fixed, dict):
        raise SpecError(f"{where}: params must be a table of field = value.")
    if grid is not None and listed is not None:
        raise SpecError(f"{where}: give grid or list, not both.")
    if grid is not None:
        if not isinstance(grid, dict) or not grid:
            raise SpecError(f"{where}: grid must be a table of field = [values].")
        for k, v in grid.items():
            if not isinstance(v, list) or not v:
                raise SpecError(f"{where}: grid.{k} must be a non-empty list of values.")
        keys = list(grid)
        variants = tuple({**fixed, **dict(zip(keys, combo))} for combo in itertools.product(*(grid[k] for k in keys)))
    elif listed is not None:
        if not isinstance(listed, list) or not listed or not all(isinstance(x, dict) for x in listed):
            raise SpecError(f"{where}: list must be a non-empty list of tables.")
        variants = tuple({**fixed, **x} for x in listed)
    else:
        variants = (dict(fixed),)
    shard = raw.get("shard_texts", False)
    if not isinstance(shard, bool):
        raise SpecError(f"{where}: shard_texts is true or false.")
    cls = ANALYSES[kind].params_cls
    if shard:
        if texts is None:
            raise SpecError(f"{where}: shard_texts needs a [texts] table.")
        from mechscope.probes.texts import TextInputs

        if not issubclass(cls, TextInputs):
            raise SpecError(f"{where}: this analysis reads no text set, so it cannot be sharded.")
        clash = {k for v in variants for k in v} & {"texts", "text_set", "n_texts"}
        if clash:
            raise SpecError(f"{where}: {', '.join(sorted(clash))} come from [texts] when shard_texts is on.")
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for v in variants:
        bad = set(v) - names
        if bad:
            raise SpecError(f"{where}: {cls.__name__} has no field(s) {', '.join(sorted(bad))}.")
        for k, value in v.items():
            check_type(value, typing.get_type_hints(cls)[k], f"{where}: {k}")
    return AnalysisEntry(kind, variants, shard, _models(raw.get("models"), f"{where} models"))


def _check_models(spec: SweepSpec) -> None:
    import importlib

    from mechscope.probes.models import get_spec

    seen = {m.name: m for m in spec.models}
    for a in spec.analyses:
        for m in a.models or ():
            seen.setdefault(m.name, m)
    for m in seen.values():
        if m.loader:
            module, _, fn = m.loader.partition(":")
            try:
                target = getattr(importlib.import_module(module), fn)
            except (ImportError, AttributeError):
                raise SpecError(f"Model {m.name!r}: cannot import its loader {m.loader!r}.") from None
            if not callable(target):
                raise SpecError(f"Model {m.name!r}: its loader {m.loader!r} is not a function.")
            continue
        ms_spec = get_spec(m.name)  # UnknownModelError: one line
        if not ms_spec.installed():
            raise SpecError(f"Model {m.name!r} is not installed here: {ms_spec.install_hint}.")


# ---------------------------------------------------------------------------------------
# Types: a TOML value against a Params field's annotation


def check_type(value, hint, where: str) -> None:
    """Raise :class:`SpecError` unless ``value`` (as TOML gives it: lists, not tuples) fits
    ``hint``. Annotations this check does not know (registered objects, Any) pass."""
    if not _fits(value, hint):
        raise SpecError(f"{where} = {value!r} has the wrong type: expected {_show(hint)}.")


def _fits(value, hint) -> bool:
    if hint is typing.Any or isinstance(hint, typing.TypeVar):
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
        return all(_fits(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return False
        return not args or all(_fits(v, args[1]) for v in value.values())
    return True  # registered objects and other annotations: checked by the Params themselves


def _show(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
