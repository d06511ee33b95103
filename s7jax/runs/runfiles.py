"""The files of a run directory, and their formats.

    <workdir>/config.json      every setting, library versions, the devices
    <workdir>/metrics.jsonl    one JSON object per epoch, flushed as it ends
    <workdir>/curves.png       train vs test loss and accuracy
    <workdir>/weights.msgpack  the final weights (see s7jax.runs.weights)
    <workdir>/checkpoints/     Orbax checkpoints (see s7jax.runs.checkpoint)
    <workdir>/tensorboard/     TensorBoard events (see s7jax.runs.events)
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from s7jax.config import Config
from s7jax.errors import ConfigError, DataError, WriteError

METRIC_KEYS = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds")
CONFIG, METRICS, CURVES, WEIGHTS = "config.json", "metrics.jsonl", "curves.png", "weights.msgpack"
CHECKPOINTS, TENSORBOARD = "checkpoints", "tensorboard"
RUN_FILES = (CONFIG, METRICS, CURVES, WEIGHTS)
RUN_FOLDERS = (CHECKPOINTS, TENSORBOARD)


def _in_run(name: str):
    return lambda workdir: Path(workdir) / name


config_path, metrics_path, curves_path, weights_path, checkpoint_dir = map(
    _in_run, (CONFIG, METRICS, CURVES, WEIGHTS, CHECKPOINTS))


def unique_dir(parent: Path, stem: str) -> Path:
    """A new folder ``parent/stem-<timestamp>`` (``-2``, ``-3``, ... within a second)."""
    parent.mkdir(parents=True, exist_ok=True)
    base = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 1000):
        path = parent / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise ConfigError(f"no free run folder name under {parent} for {base}")


def cpu_identity() -> dict[str, Any] | None:
    """The host CPU's model and the cores XLA may use (their count sets its threads, hence
    the order of its sums): a CPU run repeats only on its own. Linux; None elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    return {"vendor": fields.get("vendor_id"), "model_name": fields.get("model name"),
            "family": fields.get("cpu family"), "model": fields.get("model"),
            "avx512f": "avx512f" in flags, "avx2": "avx2" in flags,
            "cores_usable": len(os.sched_getaffinity(0))}


def package_versions(*names: str) -> dict[str, str | None]:
    """Installed versions (None if absent), from metadata: imports nothing."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = dict.fromkeys(names)
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def environment(with_jax: bool = True, **extras: Any) -> dict[str, Any]:
    """Versions, devices and the host, for every run (without JAX: the referee, a benchmark)."""
    record: dict[str, Any] = {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                              "cpu": cpu_identity()}
    if with_jax:
        import flax
        import jax
        import optax

        record.update(
            jax=jax.__version__, flax=flax.__version__, optax=optax.__version__,
            tensorflow_datasets=package_versions("tensorflow-datasets")["tensorflow-datasets"],
            backend=jax.default_backend(), devices=[str(d.device_kind) for d in jax.devices()],
            device_count=jax.device_count())
    return {**record, **extras}


def writes_files() -> bool:
    """Only the first process of a multi-host run writes the run's files."""
    import jax

    return jax.process_index() == 0


@contextlib.contextmanager
def _writing(path: Path):
    try:
        yield
    except OSError as e:
        raise WriteError(f"could not write {path}: {e.strerror or e}") from None


@contextlib.contextmanager
def written_whole(path: Path):
    """A name to write ``path`` under, renamed once whole (a full disk, a signal leave none)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with _writing(path):
            yield tmp
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_config(workdir: Path, config: Config) -> None:
    write_record(workdir, {"config": config.to_json(), "environment": environment()})


def write_record(workdir: Path, record: dict[str, Any]) -> None:
    """``config.json``: ``{"config", "environment"}`` (the referee records its own settings)."""
    if not writes_files():
        return
    with _writing(config_path(workdir)):
        config_path(workdir).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_record(workdir: Path) -> dict[str, Any]:
    path = config_path(workdir)
    try:
        record = json.loads(path.read_text())
        record["config"], record["environment"]  # noqa: B018 - both must be there
        return record
    except FileNotFoundError:
        raise ConfigError(f"{workdir}: no config.json there (not a run directory)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not a readable run config ({type(e).__name__}: {e})") from None


def read_config(workdir: Path) -> Config:
    record = read_record(workdir)
    try:
        return Config.from_json(record["config"])
    except ConfigError as e:
        raise ConfigError(f"{config_path(workdir)}: {e}") from None


def write_metrics(workdir: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl``: empty for a new run, a resumed run's checkpointed epochs."""
    if not writes_files():
        return
    with _writing(metrics_path(workdir)), open(metrics_path(workdir), "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def append_metrics(workdir: Path, row: dict[str, Any]) -> None:
    if not writes_files():
        return
    with _writing(metrics_path(workdir)), open(metrics_path(workdir), "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(workdir: Path) -> list[dict[str, Any]]:
    path = metrics_path(workdir)
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        with contextlib.suppress(ValueError):  # a flipped byte: not JSON, or not UTF-8
            rows.append(json.loads(line) if line.strip() else {})
        if len(rows) < n or not isinstance(rows[-1], dict):
            raise DataError(f"{path}, line {n}: not a JSON object (a damaged file)")
    return [row for row in rows if row]


# Wall-clock seconds vary from run to run; every other figure must repeat.
TIMING_KEYS = ("seconds",)


def metric_differences(expected: list[dict[str, Any]], actual: list[dict[str, Any]]) -> list[str]:
    """Every difference of ``actual`` from ``expected`` rows but the timings,
    one line each; empty when the run repeated exactly."""
    lines = []
    if len(expected) != len(actual):
        lines.append(f"{len(actual)} epochs, expected {len(expected)}")
    for want, got in zip(expected, actual):
        for key in sorted((set(want) | set(got)) - set(TIMING_KEYS)):
            if want.get(key) != got.get(key):
                lines.append(f"epoch {want.get('epoch')}: {key} {got.get(key)!r}, "
                             f"expected {want.get(key)!r}")
    return lines
