"""Shared timing and peak-memory helpers for the benchmark scripts.

Method (every benchmark here uses it, so numbers in RESULTS.md are comparable):

* **Time** — :func:`time_call` runs ``fn`` ``warmup`` times untimed, then ``repeat`` times
  with ``time.perf_counter`` and reports the median (also min and all samples). On a
  shared machine compare a variant only with a baseline measured *in the same run*;
  :func:`interleaved` alternates variants round by round so background load hits them
  alike, and reports per-variant medians.
* **Peak memory (CPU)** — :class:`PeakMemory` is a context manager. On entry it runs the
  garbage collector and glibc's ``malloc_trim(0)`` (so memory freed by an earlier variant
  and kept by the allocator is not silently reused and missed), resets the
  kernel's peak-RSS mark of this process (``echo 5 > /proc/self/clear_refs``, Linux ≥ 4.0)
  and records the current RSS; on exit it reads the peak (``VmHWM`` in
  ``/proc/self/status``). ``peak_extra`` = peak − RSS at entry: the extra memory the block
  needed at its worst moment, measured exactly by the kernel (no sampling). Where the
  reset is not allowed it falls back to a 1 ms sampling thread over ``VmRSS`` (may miss
  very short peaks; ``method`` says which was used). Baseline and variant must be
  measured the same way in the same process state (model loaded, one warm-up done).
* **Peak memory (CUDA)** — when the model is on a GPU, ``PeakMemory(device="cuda")`` uses
  ``torch.cuda.reset_peak_memory_stats`` / ``max_memory_allocated`` instead.

:func:`measure` combines both: variants run round-robin, each call timed *and* wrapped in
:class:`PeakMemory`, so every variant's time and memory come from the same calls.

Helpers for the report: :func:`machine_info` (CPU, cores, RAM, load, versions) and
:func:`write_section`, which replaces or appends one ``## Heading`` section of
``benchmarks/RESULTS.md`` under a file lock, leaving every other section untouched.

Typical use::

    from benchmarks.common import PeakMemory, time_call, ratio
    t = time_call(lambda: model(tokens), repeat=5, warmup=1)
    with PeakMemory() as mem:
        model(tokens)
    print(t.median, mem.peak_extra_mb)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import re
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
MB = 1024 * 1024


# ---------------------------------------------------------------------------------------
# Time


@dataclass
class Timing:
    """Wall-clock samples of one variant, in seconds."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    def __str__(self) -> str:
        return f"{self.median * 1e3:.1f} ms (median of {len(self.samples)}, min {self.min * 1e3:.1f})"


def _sync(device: str | None) -> None:
    if device and str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], repeat: int = 5, warmup: int = 1, device: str | None = None) -> Timing:
    """Median-of-``repeat`` wall time of ``fn()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t = Timing()
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync(device)
        t.samples.append(time.perf_counter() - start)
    return t


def interleaved(
    variants: dict[str, Callable[[], object]], rounds: int = 5, warmup: int = 1, device: str | None = None
) -> dict[str, Timing]:
    """Time several variants round-robin (A B C A B C …) so that load on a shared machine
    affects them alike. Returns one :class:`Timing` per variant name."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    out = {name: Timing() for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            out[name].samples.append(time.perf_counter() - start)
    return out


def ratio(a: float, b: float) -> float:
    """a / b (inf when b is 0)."""
    return a / b if b else float("inf")


# ---------------------------------------------------------------------------------------
# Peak memory


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def rss_bytes() -> int:
    """Current resident set size of this process."""
    return _status_kb("VmRSS") * 1024


def release_free_memory() -> None:
    """Collect garbage and hand free heap memory back to the OS (glibc ``malloc_trim``)."""
    import gc

    from mechscope.probes.heap import release_heap

    gc.collect()
    release_heap()


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager: the peak extra memory the block needed (see the module docstring).

    Attributes after exit: ``start`` (bytes at entry), ``peak`` (bytes, highest during the
    block), ``peak_extra`` = peak − start, ``peak_extra_mb``, ``method``.
    """

    def __init__(self, device: str | None = None, interval: float = 0.001):
        self.device = str(device) if device else "cpu"
        self.interval = interval
        self.start = self.peak = 0
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            self.method = "cuda max_memory_allocated"
            return self
        release_free_memory()
        self.start = rss_bytes()
        if _reset_peak():
            self.method = "VmHWM after clear_refs"
        else:
            self.method = "VmRSS sampled every %.0f ms" % (self.interval * 1e3)
            self.peak = self.start
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())
        else:
            self.peak = _status_kb("VmHWM") * 1024
        return None

    @property
    def peak_extra(self) -> int:
        return max(0, self.peak - self.start)

    @property
    def peak_extra_mb(self) -> float:
        return self.peak_extra / MB


def peak_extra_mb(fn: Callable[[], object], repeat: int = 3, device: str | None = None) -> float:
    """Median over ``repeat`` runs of the peak extra memory (MB) that ``fn()`` needs.
    Call it after a warm-up so one-off allocations (thread pools, caches) are excluded."""
    vals = []
    for _ in range(repeat):
        with PeakMemory(device) as m:
            fn()
        vals.append(m.peak_extra_mb)
    return statistics.median(vals)


@dataclass
class Measurement:
    """Per-variant samples from :func:`measure`: seconds and peak extra MB per call."""

    times: Timing = field(default_factory=Timing)
    peaks_mb: list[float] = field(default_factory=list)

    @property
    def time(self) -> float:
        return self.times.median

    @property
    def peak_mb(self) -> float:
        return statistics.median(self.peaks_mb)


def measure(
    variants: dict[str, Callable[[], object]], rounds: int = 3, warmup: int = 1, device: str | None = None
) -> dict[str, Measurement]:
    """Run the variants round-robin ``rounds`` times after ``warmup`` untimed calls each;
    every call is timed and its peak extra memory recorded (medians via the properties)."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    out = {name: Measurement() for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            with PeakMemory(device) as mem:
                _sync(device)
                start = time.perf_counter()
                result = fn()
                _sync(device)
                elapsed = time.perf_counter() - start
            del result
            out[name].times.samples.append(elapsed)
            out[name].peaks_mb.append(mem.peak_extra_mb)
    return out


# ---------------------------------------------------------------------------------------
# Reporting


def machine_info() -> dict[str, str]:
    """A short description of the machine and software the numbers came from."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        mem_gb = f"{_meminfo_kb('MemTotal') / 1024 / 1024:.0f} GB"
    except (OSError, KeyError):
        mem_gb = "?"
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "memory": mem_gb,
        "load average (1 min)": f"{os.getloadavg()[0]:.2f}",
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("transformer-lens", "transformers"):
        try:
            info[dist] = version(dist)
        except PackageNotFoundError:  # pragma: no cover
            pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _meminfo_kb(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def write_section(heading: str, body: str, path: Path = RESULTS_MD) -> None:
    """Replace the ``## {heading}`` section of RESULTS.md with ``body`` (append it if absent).

    Only that section changes: everything from its heading line up to the next ``## `` line
    (or the end of the file). A file lock serialises concurrent writers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    title = f"## {heading}"
    block = title + "\n\n" + body.strip("\n") + "\n"
    lock = Path(tempfile.gettempdir()) / f"mechscope-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}.lock"
    with open(lock, "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        text = path.read_text() if path.exists() else "# Benchmark results\n"
        pattern = re.compile(rf"^{re.escape(title)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
        if pattern.search(text):
            text = pattern.sub(lambda _: block + "\n", text, count=1)
        else:
            text = text.rstrip("\n") + "\n\n" + block
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text.rstrip("\n") + "\n")
        tmp.replace(path)


def add_output_flags(ap) -> None:
    """``--out FILE`` / ``--results`` / ``--verbose`` for a benchmark that prints one section."""
    ap.add_argument("--out", default=None, help="write the markdown section to this file")
    ap.add_argument("--results", action="store_true", help="also write the section into benchmarks/RESULTS.md")
    ap.add_argument("--verbose", action="store_true")


def publish(heading: str, body: str, out: str | None = None, results: bool = False) -> None:
    """Print a section; write it to ``out`` (with its heading) and/or into RESULTS.md."""
    print(body)
    if out:
        with open(out, "w") as f:
            f.write(f"## {heading}\n\n{body}")
    if results:
        write_section(heading, body)
