"""``mechscope rerun OUT_DIR [--out NEW]``: run a saved result's analysis again with the same
parameters and model, and print whether the tables are equal."""

from __future__ import annotations

from pathlib import Path

from mechscope.app.commands.common import progress, save_result


def register(sub) -> None:
    p = sub.add_parser("rerun", help="re-run a saved result with its recorded parameters",
                       description="Load the result in OUT_DIR, run its analysis again on the same model with "
                                   "the same parameters, compare the tables, and save to --out (default: "
                                   "replace OUT_DIR).")
    p.add_argument("directory", type=Path, metavar="OUT_DIR", help="a folder written by a mechscope command")
    p.add_argument("--out", type=Path, default=None, help="where to save the new result (default: OUT_DIR)")
    p.set_defaults(func=run)


def run(args) -> int:
    import pandas as pd

    from mechscope.analyses.catalog import load_result
    from mechscope.probes.models import load

    old = load_result(args.directory)
    model = load(old.model_id).model
    new = old.rerun(model, progress=progress(f"rerun {old.kind}"))
    try:
        same = old.to_frame().equals(new.to_frame()) or _close(old.to_frame(), new.to_frame())
    except NotImplementedError:
        same = None
    print(f"re-ran {old.kind} on {old.model_id}: tables {'equal' if same else 'DIFFER' if same is False else 'n/a'}")
    save_result(new, args.out or args.directory)
    return 0 if same is not False else 1


def _close(a, b) -> bool:
    import numpy as np
    import pandas as pd

    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return False
    for c in a.columns:
        x, y = a[c], b[c]
        if pd.api.types.is_float_dtype(x) and pd.api.types.is_float_dtype(y):
            if not np.allclose(x.to_numpy(float), y.to_numpy(float), rtol=1e-5, atol=1e-6, equal_nan=True):
                return False
        elif not x.equals(y):
            return False
    return True
