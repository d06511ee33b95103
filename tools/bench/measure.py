"""What every benchmark shares: the clock, the environment record, the result file.

* :func:`clock` and :func:`timed`: the one way a benchmark reads the clock.
  A call is timed until what it returns is ready (``jax.block_until_ready``,
  or the ``sync`` given: CUDA's for PyTorch), since JAX dispatches
  asynchronously and a clock read at dispatch measures nothing; the first
  call (the compile, a cache's warm-up) is timed on its own, never mixed into
  the steady-state samples.
* :func:`compile_timed`: a jitted function traced and compiled, each timed.
* :func:`run_timed`: a command in a fresh process, its wall and CPU time.
* :func:`environment`: the library's record of the environment
  (``s7jax.runs.runfiles.environment``) and what a benchmark adds to it.
* :func:`write_result`: a result as JSON, to ``results/<name>-<backend>.json``
  unless told otherwise.
* :func:`maxrss` and :func:`log`: peak memory, and a line on stderr.
* :func:`parser` and :func:`command`: a benchmark's flags (``--out`` in
  every one), then its run, with s7jax's one-line errors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def parser(doc: str, name: str):
    """A benchmark's flags: its docstring's first paragraph, and ``--out``."""
    from s7jax.cli import OneLineErrorParser  # imports JAX: not in a worker before its clock

    p = OneLineErrorParser(description=doc.split("\n\n")[0])
    p.add_argument("--out", help=f"result JSON (default results/{name}-<backend>.json)")
    return p


def command(parse_args: Callable[[list[str]], Any],
            run: Callable[[Any, list[str]], int | None]) -> int:
    """A benchmark's ``main``: the process's flags parsed by ``parse_args``,
    then ``run(args, argv)`` (exit 0 unless it returns a code); a known error
    ends in one line and its exit code, as every s7jax command's."""
    from s7jax.cli import exit_on_known_errors  # imports JAX: not in a worker before its clock

    argv = sys.argv[1:]
    args = parse_args(argv)
    with exit_on_known_errors():
        return run(args, argv) or 0


def log(msg: str, tag: str = "bench") -> None:
    """A progress line on stderr (stdout holds the result's table)."""
    print(f"[{tag}] {msg}", file=sys.stderr, flush=True)


def maxrss() -> dict[str, int]:
    """Peak resident set sizes in KiB (Linux reports ru_maxrss in KiB): this
    process, and its largest finished child (DataLoader workers)."""
    return {"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "maxrss_children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}


def _block(result: Any) -> Any:
    import jax

    return jax.block_until_ready(result)


def clock(fn: Callable[[], Any], sync: Callable[[Any], Any] | None = None) -> tuple[float, Any]:
    """Seconds of one call of ``fn``, the clock read once what it returns is
    ready (``sync(result)``; by default ``jax.block_until_ready``), and what
    it returned."""
    t = time.perf_counter()
    result = (sync or _block)(fn())
    return time.perf_counter() - t, result


@dataclasses.dataclass
class Timing:
    """What :func:`timed` measured."""

    first_s: float  # the first call alone: a compile, a warm-up
    seconds: list[float]  # each timed sample, in order
    result: Any = None  # what the last call returned

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)


def timed(fn: Callable[[], Any], repeats: int = 1, *, calls: int = 1, warmup: int = 0,
          sync: Callable[[Any], Any] | None = None) -> Timing:
    """``fn()`` once, timed on its own; ``warmup`` more calls, untimed; then
    ``repeats`` samples of ``calls`` calls each. Within a sample the calls
    run back to back, as in a training loop (an asynchronous runtime
    overlaps one's dispatch with the last's work), and the clock is read
    when the last one's result is ready."""
    block = sync or _block

    def sample() -> Any:
        for _ in range(calls - 1):
            fn()
        return fn()

    first, result = clock(fn, block)
    for _ in range(warmup):
        block(fn())
    seconds = []
    for _ in range(repeats):
        s, result = clock(sample, block)
        seconds.append(s)
    return Timing(first, seconds, result)


def epoch_summary(seconds: list[float], images: int, **extra: Any) -> dict[str, Any]:
    """Timed epochs as a result records them: the mean, and each."""
    mean = sum(seconds) / len(seconds)
    return {"seconds": mean, "images_per_s": images / mean, "per_epoch_s": seconds,
            "images": images, **extra}


def compile_timed(jitted: Any, *args: Any) -> tuple[Any, dict[str, float]]:
    """``jitted`` (a ``jax.jit`` function) lowered for ``args`` and compiled:
    the executable, and the seconds to trace (``trace_s``) and to trace and
    compile (``compile_s``)."""
    t = time.perf_counter()
    lowered = jitted.lower(*args)
    trace_s = time.perf_counter() - t
    compiled = lowered.compile()
    return compiled, {"trace_s": trace_s, "compile_s": time.perf_counter() - t}


def run_timed(command: Sequence[str], **kwargs: Any) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``command`` (``subprocess.run``, output captured as text), with its
    wall seconds and its CPU seconds (user + system, of it and what it
    waited for): on a shared machine other jobs stretch the wall time, not
    the work."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(list(command), capture_output=True, text=True, **kwargs)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, {"wall_s": wall, "cpu_s": cpu}


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def environment(with_jax: bool = True, **extras: Any) -> dict[str, Any]:
    """``s7jax.runs.runfiles.environment`` (Python, the CPU; JAX's versions and
    devices unless ``with_jax`` is False: a parent process that leaves the
    accelerator to its workers must not claim it) and what a benchmark adds:
    the load average before it ran (other work slows a shared machine), the
    CPU model by name (the tables name it), the usable CPUs, the platform and
    the memory; with JAX, the first device's kind."""
    # Imported here: s7jax.runs.runfiles imports JAX, which a benchmark's workers
    # import themselves, under the clock and in their memory's account.
    from s7jax.runs import runfiles

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = None
    record = runfiles.environment(
        with_jax, loadavg_before=list(os.getloadavg()), usable_cpus=usable,
        platform=platform.platform(), machine=platform.machine(), memory_gib=_memory_gib())
    record["cpu_model"] = (record["cpu"] or {}).get("model_name")
    if with_jax:
        import jax

        record["device_kind"] = jax.devices()[0].device_kind
    return {**record, **extras}


def write_result(result: Any, out: str | os.PathLike | None, name: str,
                 results_dir: str | os.PathLike = "results", table: Callable | None = None) -> Path:
    """A benchmark's result as JSON: to ``out``, or by default to
    ``<results_dir>/<name>-<backend>.json`` (the backend from the result);
    prints ``table(result)`` first if given, says where, returns the path."""
    if table:
        print(table(result))
    path = Path(out) if out else Path(results_dir) / f"{name}-{result['backend']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path
