"""Small dataclasses as data: registries keyed by kind, ``to_dict`` / ``from_dict``.

Interventions, decoding strategies, KV-cache policies and analysis parameters are frozen
dataclasses. Each family has a :class:`Registry`; a class joins it with
``@REGISTRY.register("kind")``. ``to_dict(obj)`` gives JSON-ready data
(``{"kind": ..., field: value}``; nested registered objects, tuples and lists included) and
``REGISTRY.from_dict(d)`` rebuilds the object. Only registered kinds are ever built from a
file, so a crafted document can name nothing else.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, TypeVar

from mechscope.probes.errors import InputError

T = TypeVar("T")

# every registry by name, so nested objects can be decoded whatever family they belong to
_REGISTRIES: dict[str, "Registry"] = {}


class Registry:
    """Kinds of one family (``what``: "intervention", "strategy", ...) → their classes."""

    def __init__(self, what: str):
        self.what = what
        self._classes: dict[str, type] = {}
        _REGISTRIES[what] = self

    def register(self, kind: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            if kind in self._classes and self._classes[kind].__qualname__ != cls.__qualname__:
                raise ValueError(f"{self.what} kind {kind!r} is registered twice.")
            cls.kind = kind  # type: ignore[attr-defined]
            cls.family = self.what  # type: ignore[attr-defined]
            self._classes[kind] = cls
            return cls

        return deco

    def names(self) -> list[str]:
        return list(self._classes)

    def __getitem__(self, kind: str) -> type:
        return self.get(kind)

    def __contains__(self, kind: str) -> bool:
        return kind in self._classes

    def get(self, kind: str, label: str | None = None) -> type:
        if kind not in self._classes:
            raise InputError(f"Unknown {label or self.what} {kind!r}: choose from {', '.join(self._classes) or '(none)'}.")
        return self._classes[kind]

    def resolve(self, obj, label: str | None = None) -> Any:
        """A member given by kind name (built with its defaults), by its saved dict, or as is;
        ``label`` names the family in the message for an unknown kind."""
        if isinstance(obj, str):
            return self.get(obj, label)()
        if isinstance(obj, dict):
            return self.from_dict(obj)
        return obj

    def create(self, kind: str, **fields) -> Any:
        return self.get(kind)(**fields)

    def from_dict(self, data: dict) -> Any:
        if not isinstance(data, dict) or "kind" not in data:
            raise InputError(f"A saved {self.what} must be a mapping with a 'kind'.")
        cls = self.get(data["kind"])
        return build(cls, {k: v for k, v in data.items() if k not in ("kind", "family")})


def to_dict(obj) -> dict:
    """``{"kind", "family", **fields}`` for a registered dataclass instance."""
    if not (dataclasses.is_dataclass(obj) and hasattr(type(obj), "kind") and hasattr(type(obj), "family")):
        raise TypeError(f"{type(obj).__name__} is not a registered dataclass.")
    out = {"kind": type(obj).kind, "family": type(obj).family}
    for f in dataclasses.fields(obj):
        if f.metadata.get("serialise", True):
            out[f.name] = encode(getattr(obj, f.name))
    return out


class Data:
    """Mixin for registered dataclasses (interventions, strategies, KV policies):
    ``obj.to_dict()`` is :func:`to_dict`."""

    def to_dict(self) -> dict:
        return to_dict(self)


def encode(value):
    """JSON-ready form of a field value."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and hasattr(type(value), "family"):
        return to_dict(value)
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return value.item()
    raise TypeError(f"Cannot serialise a value of type {type(value).__name__}.")


def decode(value):
    """Inverse of :func:`encode` for nested registered objects (lists stay lists)."""
    if isinstance(value, dict) and "kind" in value and value.get("family") in _REGISTRIES:
        return _REGISTRIES[value["family"]].from_dict(value)
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        return {k: decode(v) for k, v in value.items()}
    return value


def build(cls: type[T], fields: dict) -> T:
    """Instantiate ``cls`` from decoded data, turning lists back into tuples where the
    field's annotation asks for a tuple."""
    hints = typing.get_type_hints(cls)
    if hasattr(cls, "upgrade_saved"):  # fields saved under older names
        fields = cls.upgrade_saved(fields)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(fields) - known
    if unknown:
        raise InputError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}.")
    values = {k: _coerce(decode(v), hints.get(k)) for k, v in fields.items()}
    return cls(**values)


def _coerce(value, hint):
    if hint is None or not isinstance(value, list):
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if typing.get_origin(arg) is tuple or arg is tuple:
                return _coerce(value, arg)
        return value
    if origin is tuple or hint is tuple:
        args = typing.get_args(hint)
        inner = args[0] if args and (len(args) == 2 and args[1] is Ellipsis) else None
        return tuple(_coerce(v, inner) for v in value)
    return value
