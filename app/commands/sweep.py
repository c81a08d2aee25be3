"""``mechscope sweep run SPEC --out DIR`` / ``sweep status DIR`` / ``sweep report DIR``:
many analyses × parameters × models × text shards from a TOML spec (docs/sweeps.md),
resumable; locally by default, on Ray with ``--ray`` or ``--address``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("sweep", help="run a sweep of analyses × parameters × models (docs/sweeps.md)",
                       description="Run, inspect and report sweeps: many analyses, parameter grids, models and "
                                   "text shards, each job saved as a re-runnable Result.")
    ss = p.add_subparsers(dest="sweep_command", metavar="SUBCOMMAND")
    r = ss.add_parser("run", help="run the spec's missing or failed jobs",
                      description="Run every job of SPEC not yet done in --out. Running again runs only missing "
                                  "or failed jobs; Ctrl-C keeps every finished job.")
    r.add_argument("spec", type=Path, metavar="SPEC", help="a sweep spec (TOML)")
    r.add_argument("--out", type=Path, required=True, help="the sweep folder (new, empty, or an earlier sweep's)")
    r.add_argument("--ray", action="store_true", help="run on a local Ray instance (one actor per model)")
    r.add_argument("--address", default=None, help="join this Ray cluster (implies --ray)")
    r.add_argument("--gpus-per-actor", type=float, default=0.0,
                   help="GPUs each Ray actor asks for; fractions share a GPU (0.25: four per card) (default 0)")
    r.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs each Ray actor asks for (default 1)")
    r.add_argument("--actors", type=int, default=1, help="Ray actors per model (default 1)")
    r.add_argument("--retries", type=int, default=2,
                   help="times a job is retried when its Ray actor dies (default 2)")
    r.add_argument("--device", default=None, help="torch device (default: the spec's device, else cpu)")
    r.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                   help="write the report when the run ends (default on)")
    r.set_defaults(func=run)
    s = ss.add_parser("status", help="how many jobs are done, failed, pending")
    s.add_argument("directory", type=Path, metavar="DIR")
    s.set_defaults(func=show_status)
    t = ss.add_parser("report", help="write DIR/report: table.parquet, table.csv and comparison figures")
    t.add_argument("directory", type=Path, metavar="DIR")
    t.set_defaults(func=report)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run(args) -> int:
    from mechscope.probes.errors import InputError
    from mechscope.sweeps import build_report, load_spec, run_sweep

    if args.device and args.device.startswith("cuda") and not (args.ray or args.address):
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"--device {args.device}: no CUDA device is available here.")
    spec = load_spec(args.spec)  # every problem in the spec: one line, before anything runs
    outcome = run_sweep(spec, args.out, executor="ray" if (args.ray or args.address) else "local",
                        address=args.address, gpus_per_actor=args.gpus_per_actor, actors=args.actors,
                        cpus_per_actor=args.cpus_per_actor, max_retries=args.retries, device=args.device,
                        spec_text=args.spec.read_text(encoding="utf-8"))
    print(outcome.line())
    for key, err in list(outcome.errors.items())[:20]:
        print(f"  failed {key[:12]}: {err}")
    if args.report:
        build_report(args.out)
        print(f"report in {args.out / 'report'}")
    return 1 if outcome.failed else 0


def show_status(args) -> int:
    from mechscope.sweeps.report import format_status, status

    s = status(args.directory)
    print(format_status(s))
    return 0


def report(args) -> int:
    from mechscope.sweeps import build_report

    out = build_report(args.directory)
    t = out["table"]
    print(f"{len(t)} jobs, {len(out['figures'])} figures: {args.directory / 'report'}")
    return 0
