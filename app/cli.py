"""The ``mechscope`` command line.

Each subcommand lives in its own module under ``app/commands/`` and exposes
``register(subparsers)``; the module's parser calls ``set_defaults(func=run)`` where
``run(args) -> int``. Every user-facing failure is a ``MechscopeError``: it is printed as one
line on stderr and the exit status is 2 — never a traceback. Running out of GPU (or CPU)
memory is one such line too, naming the command's flags that shrink the work.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from mechscope.probes.errors import MechscopeError


def build_parser() -> argparse.ArgumentParser:
    import mechscope.app.commands as commands

    parser = argparse.ArgumentParser(prog="mechscope", description="Mechanistic-interpretability workbench.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"mechscope.app.commands.{info.name}")
        if hasattr(module, "register"):  # helpers such as app.commands.common register nothing
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MechscopeError as exc:
        print(f"mechscope: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mechscope: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        torch = sys.modules.get("torch")
        if torch is None or not isinstance(exc, torch.OutOfMemoryError):
            raise
        print(f"mechscope: error: {out_of_memory_message(args)}", file=sys.stderr)
        return 2


# flags that shrink a run's memory, in the order a user should try them
MEMORY_FLAGS = ("batch_size", "rows", "n_texts", "max_tokens", "lengths", "max_length", "context_lengths")


def out_of_memory_message(args: argparse.Namespace) -> str:
    """One line for an out-of-memory error: the flags of this command that lower memory, with
    their current values."""
    knobs = [f"--{k.replace('_', '-')} (now {getattr(args, k)})" for k in MEMORY_FLAGS
             if getattr(args, k, None) is not None]
    device = getattr(args, "device", None)
    where = f" on {device}" if device else ""
    if not knobs:
        return f"out of memory{where}: use a shorter input or a device with more memory."
    return f"out of memory{where}: lower " + " or ".join(knobs) + "."


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
