"""What every analysis command shares: ``--model`` / ``--out``, flags generated from the
analysis' typed Params (so the CLI's defaults ARE the analysis' defaults), model loading,
a tqdm progress callback and saving the Result (atomically, with offline figures)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path

from mechscope.probes.errors import InputError
from mechscope.probes.results import check_replaceable


def add_model_out(parser, out_required: bool = True) -> None:
    parser.add_argument("--model", default=None, help="model name (default: the embedded smollm2-135m)")
    parser.add_argument("--out", type=Path, required=out_required, default=None,
                        help="directory to save the Result in (result.json, arrays, table.csv, figures)")
    parser.add_argument("--device", default="cpu", help="torch device for the model (cpu, cuda, cuda:1, ...)")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _scalar_type(hint):
    """The argparse type for a field annotation (None: not a simple flag)."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        return _scalar_type(args[0]) if len(args) == 1 else None
    if hint in (int, float, str, bool):
        return hint
    if origin is typing.Literal:
        return str
    return None


def add_params(parser, params_cls, skip: typing.Iterable[str] = ()) -> None:
    """One flag per simple field of ``params_cls`` (int, float, str, bool, Literal,
    optional ones), default and help taken from the field. Tuple/list fields of simple items
    take a comma-separated value."""
    hints = typing.get_type_hints(params_cls)
    skip = set(skip)
    for f in dataclasses.fields(params_cls):
        if f.name in skip or not f.init:
            continue
        hint = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_ = f.metadata.get("help", "")
        kind = _scalar_type(hint)
        if kind is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=default,
                                help=f"{help_} (default {default})")
            continue
        if kind is not None:
            choices = list(typing.get_args(hint)) if typing.get_origin(hint) is typing.Literal else None
            listed = f.metadata.get("choices")  # e.g. the shipped text sets, read from the data
            if choices is None and listed is not None:
                choices = list(listed() if callable(listed) else listed)
            parser.add_argument(_flag(f.name), type=kind, default=default, choices=choices,
                                help=f"{help_} (default {default})")
            continue
        origin = typing.get_origin(_strip_optional(hint))
        if origin in (tuple, list):
            inner = (typing.get_args(_strip_optional(hint)) or (str,))[0]
            if inner in (int, float, str):
                shown = ",".join(map(str, default)) if default else default
                parser.add_argument(_flag(f.name), type=_list_of(inner), default=default,
                                    help=f"{help_} (comma-separated; default {shown})")


def _strip_optional(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def _list_of(kind):
    def parse(text: str):
        try:
            return tuple(kind(p.strip()) for p in text.split(",") if p.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, not {text!r}")

    return parse


def params_from_args(params_cls, args, **extra):
    """Build ``params_cls`` from the parsed flags made by :func:`add_params` (plus ``extra``)."""
    values = {}
    for f in dataclasses.fields(params_cls):
        if f.init and hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    values.update(extra)
    return params_cls(**values)


def load_model(args):
    from mechscope.probes.models import DEFAULT_MODEL, load

    device = getattr(args, "device", None) or "cpu"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: no CUDA device is available here.")
    return load(getattr(args, "model", None) or DEFAULT_MODEL, device=device).model


def check_out_dir(out: Path | None) -> None:
    """Refuse, before any work, to save over anything but a saved result."""
    if out is not None:
        check_replaceable(Path(out))


def save_result(result, out: Path | None) -> None:
    if out is None:
        return
    check_out_dir(out)
    path = result.save(out, html=True)
    print(f"saved to {path}")


def progress(desc: str):
    """A ``progress(done, total)`` callback drawing a tqdm bar."""
    from tqdm.auto import tqdm

    bar = {"b": None}

    def cb(done: int, total: int) -> None:
        if bar["b"] is None:
            bar["b"] = tqdm(total=total, desc=desc, leave=False)
        bar["b"].n = done
        bar["b"].refresh()
        if done >= total:
            bar["b"].close()

    return cb
