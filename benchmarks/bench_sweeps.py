"""Benchmarks for sweeps: ``python -m benchmarks.bench_sweeps``.

The same sweep runs on the local executor and on the Ray executor (a Ray instance started
once, untimed, before both). Each run gets a fresh sweep folder.

* **Per-job overhead (CPU, default)**: a sweep of small sink-metric jobs (Gu et al.'s α_k over
  a grid of ε × text shards) on the embedded model. The steady-state cost of a job is the
  time between consecutive ``done`` lines of the same worker in the sweep's index (so model
  loading and actor start-up are left out; they are reported apart as the time to the first
  finished job). A job's overhead is that gap minus the job's own time (analysis, save and
  metrics, measured inside the job): on Ray it holds the call to the actor, the transfer of
  the saved files and the driver's write; locally, the index line. Reported as seconds and as
  a share of the job's own time (target on Ray ≤ 10 % on jobs of ≥ 5 s: pick
  ``--texts-per-job`` / ``--max-tokens`` so a job takes that long).
* **GPU mode** (``--device cuda --actors 1,2,4 --gpus-per-actor 0.25 --jobs 128``): throughput
  (jobs/s over the whole run, start-up included, and steady state) of Ray with 1, 2, 4
  actors sharing the GPU against the local executor, and the GPU's utilisation sampled every
  0.2 s (``nvidia-smi``, else ``torch.cuda.utilization``) while each run lasts.

Threads: the local run uses as many torch threads as a Ray actor has CPUs
(``--cpus-per-actor``, default 1; Ray sets ``OMP_NUM_THREADS`` to that), so both executors do
the same arithmetic with the same threads.

``--model tiny`` uses a tiny random model built here (no weights needed: a quick check that
the benchmark runs). Output: a markdown section printed (``--out FILE`` writes it too).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

HEADING = "Sweeps"


def tiny(device: str = "cpu"):
    """A tiny random llama-like HookedTransformer (no tokenizer): for ``--model tiny``."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=128, d_vocab=49152, n_ctx=512,
                                  act_fn="silu", gated_mlp=True, normalization_type="RMS", final_rms=True,
                                  positional_embedding_type="rotary", rotary_dim=16, default_prepend_bos=False,
                                  seed=0, device=device, dtype=torch.float32)
    return HookedTransformer(cfg, move_to_device=True).eval()


def make_spec(model: str, jobs: int, texts_per_job: int, max_tokens: int, device: str) -> dict:
    """A grid of ε × text shards, ``jobs`` jobs (rounded up to whole ε rows). The tiny model
    has no tokenizer: its shards are fixed random token ids instead of the shipped texts."""
    shards = max(1, min(16, jobs))
    n_eps = math.ceil(jobs / shards)
    eps = [round(0.05 + 0.9 * i / max(1, n_eps - 1), 4) for i in range(n_eps)] if n_eps > 1 else [0.3]
    params = {"max_tokens": max_tokens, "k_max": 4, "min_queries": 4, "batch_size": texts_per_job}
    if model == "tiny":
        import random

        rng = random.Random(0)
        texts = [[[rng.randrange(49152) for _ in range(max_tokens)] for _ in range(texts_per_job)] for _ in range(shards)]
        variants = [{"eps": e, "texts": t} for e in eps for t in texts]
        return {"name": "bench", "models": [{"name": "tiny", "loader": "benchmarks.bench_sweeps:tiny"}],
                "device": device, "analysis": [{"kind": "sinks", "list": variants,
                                                "params": {**params, "variants": ["no_bos"]}}]}
    return {"name": "bench", "models": [model], "device": device,
            "texts": {"text_set": "mixed", "n_texts": shards * texts_per_job, "shards": shards},
            "analysis": [{"kind": "sinks", "shard_texts": True, "grid": {"eps": eps},
                          "params": {**params, "variants": ["no_bos", "bos"]}}]}


class GpuSampler:
    """GPU utilisation (%) every ``interval`` s while the block runs."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.samples, self._stop = interval, [], threading.Event()

    def _one(self):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5)
            return float(out.stdout.split()[0])
        except Exception:  # noqa: BLE001
            import torch

            return float(torch.cuda.utilization())

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(self._one())
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples) if self.samples else float("nan")


def _parse_time(s: str) -> float:
    import datetime

    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def steady_per_job(out: Path) -> tuple[float, float, float, int]:
    """From a sweep's index: (median seconds between consecutive done lines of one worker,
    median seconds a job took as the job measured itself (analysis + save + metrics), median
    per-job overhead = that gap minus the later job's own seconds, jobs done)."""
    from mechscope.sweeps.store import SweepStore

    events = SweepStore(out).events()
    by_worker: dict = {}
    for e in events:
        if e["event"] == "done":
            by_worker.setdefault(e.get("worker") or e.get("executor"), []).append((_parse_time(e["time"]), e["seconds"]))
    gaps = [b[0] - a[0] for ts in by_worker.values() for a, b in zip(ts, ts[1:])]
    extra = [b[0] - a[0] - b[1] for ts in by_worker.values() for a, b in zip(ts, ts[1:])]
    own = [e["seconds"] for e in events if e["event"] == "done"]
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    return med(gaps), med(own), med(extra), len(own)


def run_once(spec, executor: str, workdir: Path, gpu: bool, **kw) -> dict:
    from mechscope.sweeps import run_sweep

    out = Path(tempfile.mkdtemp(prefix=f"{executor}-", dir=workdir))
    shutil.rmtree(out)
    sampler = GpuSampler() if gpu else None
    start = time.perf_counter()
    if sampler:
        with sampler:
            outcome = run_sweep(spec, out, executor=executor, show_progress=False, **kw)
    else:
        outcome = run_sweep(spec, out, executor=executor, show_progress=False, **kw)
    wall = time.perf_counter() - start
    gap, own, extra, n = steady_per_job(out)
    from mechscope.sweeps.store import SweepStore

    first = min((_parse_time(e["time"]) for e in SweepStore(out).events() if e["event"] == "done"), default=float("nan"))
    started = min((_parse_time(e["time"]) for e in SweepStore(out).events() if e["event"] == "started"),
                  default=float("nan"))
    return {"executor": executor, **{k: v for k, v in kw.items() if k in ("actors", "gpus_per_actor")},
            "wall_s": wall, "done": outcome.done, "failed": outcome.failed, "jobs_per_s": outcome.done / wall,
            "steady_s_per_job": gap, "job_own_s": own,
            "overhead_s_per_job": extra, "first_job_after_s": first - started,
            "gpu_util_mean": sampler.mean if sampler else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="registry model, or 'tiny' (built here)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=8, help="jobs in the sweep (rounded up to whole ε rows)")
    ap.add_argument("--texts-per-job", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--actors", default="1", help="comma-separated actor counts for the Ray runs")
    ap.add_argument("--gpus-per-actor", type=float, default=0.0)
    ap.add_argument("--cpus-per-actor", type=float, default=1.0)
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    ap.add_argument("--json", default=None, help="also write the measurements as JSON here")
    ap.add_argument("--out", default=None, help="write the markdown section to this file")
    args = ap.parse_args(argv)

    import os

    import ray

    from benchmarks.common import machine_info, markdown_table
    from mechscope.sweeps import parse_spec

    gpu = args.device.startswith("cuda")
    import torch

    if gpu and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device is available here.")
    if gpu and args.gpus_per_actor <= 0:
        raise SystemExit("--device cuda needs --gpus-per-actor (e.g. 0.25: four actors share the GPU).")

    # the local executor gets the threads a Ray actor gets (Ray sets OMP_NUM_THREADS to its CPUs)
    torch.set_num_threads(max(1, int(args.cpus_per_actor)))
    spec = parse_spec(make_spec(args.model, args.jobs, args.texts_per_job, args.max_tokens, args.device))
    root = str(Path(__file__).resolve().parents[1])
    path = root + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    ray_init = time.perf_counter() - t0
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-sweeps-") as tmp:
        work = Path(tmp)
        rows.append(run_once(spec, "local", work, gpu))
        for n in [int(x) for x in args.actors.split(",") if x.strip()]:
            rows.append(run_once(spec, "ray", work, gpu, actors=n, gpus_per_actor=args.gpus_per_actor,
                                 cpus_per_actor=args.cpus_per_actor))
    ray.shutdown()
    base = rows[0]
    table = []
    for r in rows:
        label = "local" if r["executor"] == "local" else f"ray × {r['actors']} (gpu {r.get('gpus_per_actor', 0):g})"
        table.append([label, r["done"], f"{r['wall_s']:.1f}", f"{r['jobs_per_s']:.2f}", f"{r['first_job_after_s']:.1f}",
                      f"{r['steady_s_per_job']:.3f}", f"{r['job_own_s']:.3f}", f"{r['overhead_s_per_job']:.3f}",
                      f"{r['overhead_s_per_job'] / r['job_own_s']:.1%}",
                      f"{r['jobs_per_s'] / base['jobs_per_s']:.2f}×",
                      "" if r["gpu_util_mean"] is None else f"{r['gpu_util_mean']:.0f}%"])
    info = machine_info()
    body = (f"Sweep: {spec.jobs().__len__()} sink-metric jobs ({args.texts_per_job} texts × {args.max_tokens} tokens "
            f"each) on {args.model}, device {args.device}, {torch.get_num_threads()} torch thread(s) per worker; Ray started in {ray_init:.1f} s (untimed).\n\n"
            + markdown_table(["executor", "jobs", "wall s", "jobs/s", "first job done after s", "steady s/job",
                              "job's own s", "overhead s/job", "overhead / job", "throughput vs local", "GPU util"], table)
            + "\n\nMachine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + "\n")
    print(body)
    if args.out:
        Path(args.out).write_text(f"## {HEADING}\n\n{body}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "ray_init_s": ray_init}, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
