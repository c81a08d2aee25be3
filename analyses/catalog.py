"""Every analysis the workbench knows, for loading and re-running saved results.

``load_result(dir)`` imports each module of the ``analyses`` and ``saes`` packages (our own
code, a fixed set) so that every result kind, parameter kind and intervention kind is
registered, then reads the folder through :meth:`probes.results.Result.load`, which
resolves names through those registries only — a ``result.json`` naming anything else
(``os``, a test module) is refused with a clear message.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from pathlib import Path

from mechscope.probes.results import ANALYSES, Result, result_kinds

PACKAGES = ("mechscope.analyses", "mechscope.saes")


@functools.lru_cache(maxsize=1)
def import_all() -> tuple[str, ...]:
    """Import every analysis module once; returns their names."""
    names = []
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_"):
                continue
            importlib.import_module(f"{package}.{info.name}")
            names.append(f"{package.removeprefix('mechscope.')}.{info.name}")
    return tuple(names)


def load_result(directory: str | Path) -> Result:
    import_all()
    return Result.load(directory)


def kinds() -> list[str]:
    """Result kinds that can be loaded."""
    import_all()
    return result_kinds()


def analyses() -> list[str]:
    """Analysis kinds that can be (re-)run."""
    import_all()
    return sorted(ANALYSES)
