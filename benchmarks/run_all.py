"""Run every ``benchmarks/bench_*.py`` module's ``main()`` (``make bench``).

``python -m benchmarks.run_all [name ...]`` runs all, or only the named ones
(``foundation`` or ``bench_foundation``). ``main`` may take an argv list (it gets ``[]``,
i.e. its defaults) or nothing.

Each benchmark writes its own section of benchmarks/RESULTS.md. A failing benchmark is
reported and the others still run; the exit status is non-zero if any failed.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import time
import traceback
from pathlib import Path


def discover() -> list[str]:
    here = Path(__file__).resolve().parent
    return [f"benchmarks.{p.stem}" for p in sorted(here.glob("bench_*.py"))]


def main(argv: list[str] | None = None) -> int:
    names = discover()
    wanted = set(argv if argv is not None else sys.argv[1:])
    if wanted:
        names = [n for n in names if n.split(".")[-1] in wanted or n.split(".")[-1].removeprefix("bench_") in wanted]
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            main_fn = importlib.import_module(name).main
            takes_args = bool(inspect.signature(main_fn).parameters)
            rc = main_fn([]) if takes_args else main_fn()  # [] = defaults, not our own argv
        except SystemExit as exc:  # an argparse-style main may exit
            rc = exc.code
        except Exception:
            traceback.print_exc()
            rc = 1
        print(f"== {name}: {'ok' if not rc else f'failed ({rc})'} in {time.perf_counter() - start:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
