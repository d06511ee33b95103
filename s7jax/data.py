"""MNIST from its four official files, and the input pipelines.

Two sources give the same 70,000 images (tested as matched sets; each keeps
its own order):

* TensorFlow Datasets' ``mnist``, prepared offline on first use (in TFDS's own
  ``data_dir``, which honours ``TFDS_DATA_DIR``) from the official files that
  ship inside the package (``s7jax/mnist_files/``), through TFDS's manual-download
  mechanism, so no network is needed. The default wherever TFDS is installed.
* The same files read with numpy (:func:`read_idx`), where TensorFlow is not
  installed: a Colab TPU runtime or a GPU machine without it.

Either way the files are checked against ``SHA256SUMS`` first: given a missing
file, TFDS would try to download it and take minutes to fail.

Three pipelines feed training, each a pure function of (seed, step), so the
same seed gives the same batches and a run resumed at any step sees exactly
the batches the uninterrupted run would have seen:

* :func:`train_dataset`: tf.data on the host (TensorFlow's stateless random
  ops keyed on the seed, epoch and step);
* :class:`DeviceTrainData`: the split resident on the accelerator, batched
  and augmented there in JAX, one jitted call per batch (:meth:`batches`) or
  folded into a compiled epoch (:meth:`scan`), with the same batches;
* evaluation batches (:func:`eval_batches`) are plain numpy on every path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import importlib.util
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from s7jax.augment import AugmentConfig, augment_jax, augment_tf
from s7jax.errors import ConfigError, DataError
from s7jax.seedwise import seedwise
from s7jax.tf_cpu import tensorflow

MEAN, STD = 0.1307, 0.3081  # training-set pixel statistics after scaling to [0, 1]

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# Split -> (images file, labels file, examples).
IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801  # IDX: uint8 data, 3 or 1 dimensions
SOURCES = ("auto", "tfds", "idx")


@dataclasses.dataclass(frozen=True)
class Split:
    """One split in host memory: uint8 images ``(N, 28, 28, 1)`` and int32 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None) -> "Split":
        """The first ``n`` examples (all when ``n`` is None)."""
        if n is None:
            return self
        if not 0 < n <= len(self):
            raise DataError(f"subset size must be in 1..{len(self)}, got {n}")
        return Split(self.images[:n], self.labels[:n])


def default_manual_dir() -> Path:
    """Where the official files are looked for: ``$S7JAX_MNIST_DIR``, else the
    copy that ships inside the package, ``s7jax/mnist_files``."""
    env = os.environ.get("S7JAX_MNIST_DIR")
    return Path(env) if env else Path(__file__).resolve().parent / "mnist_files"


def _fix(manual_dir: Path) -> str:
    """What to do about a bad file in ``manual_dir``."""
    hint = "" if manual_dir != default_manual_dir() else " or pass --manual-dir"
    return f"restore the official MNIST files in {manual_dir} (see s7jax/mnist_files/README.md){hint}"


def verify_mnist_files(manual_dir: str | os.PathLike) -> None:
    """Raise :class:`DataError` unless all four files exist and match SHA256SUMS."""
    manual_dir = Path(manual_dir)
    fix = _fix(manual_dir)
    sums_file = manual_dir / "SHA256SUMS"
    if not sums_file.is_file():
        raise DataError(f"missing {sums_file}: {fix}")
    expected = _read_sums(sums_file, fix)
    for name in MNIST_FILES:
        path = manual_dir / name
        if not path.is_file():
            raise DataError(f"missing MNIST file {path}: {fix}")
        if name not in expected:
            raise DataError(f"{sums_file} has no checksum for {name}: {fix}")
        if hashlib.sha256(path.read_bytes()).hexdigest() != expected[name]:
            raise DataError(f"corrupt MNIST file {path} (SHA-256 mismatch): {fix}")


def _read_sums(sums_file: Path, fix: str) -> dict[str, str]:
    """``{file name: SHA-256}`` from a ``sha256sum`` listing (``DIGEST  NAME``
    or ``DIGEST *NAME``; blank and ``#`` lines skipped), or DataError."""
    try:
        text = sums_file.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{sums_file} is not a text file of checksums (not UTF-8): {fix}") from None
    except OSError as e:
        raise DataError(f"cannot read {sums_file}: {e.strerror or e}") from None
    expected = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        digest, _, name = line.strip().partition(" ")
        name = name.strip().lstrip("*")
        if len(digest) != 64 or not name or any(c not in "0123456789abcdefABCDEF" for c in digest):
            raise DataError(f"{sums_file}, line {number}: not 'SHA-256  file name': {fix}")
        expected[name] = digest.lower()
    return expected


def _idx_payload(path: Path, magic: int, dims: tuple[int, ...], fix: str) -> np.ndarray:
    """The uint8 array of one gzip IDX file, after checking its magic number,
    its header's sizes against ``dims`` and its length."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"corrupt MNIST file {path} (not a complete gzip file: {e}): {fix}") from None
    header_len = 4 * (1 + len(dims))
    if len(raw) < header_len:
        raise DataError(f"corrupt MNIST file {path} (shorter than its IDX header): {fix}")
    header = np.frombuffer(raw[:header_len], dtype=">u4")
    if int(header[0]) != magic:
        raise DataError(f"corrupt MNIST file {path} (IDX magic number {int(header[0]):#010x}, "
                        f"expected {magic:#010x}): {fix}")
    if tuple(int(d) for d in header[1:]) != dims:
        raise DataError(f"corrupt MNIST file {path} (IDX sizes {tuple(int(d) for d in header[1:])}, "
                        f"expected {dims}): {fix}")
    if len(raw) != header_len + int(np.prod(dims)):
        raise DataError(f"corrupt MNIST file {path} ({len(raw) - header_len} data bytes, "
                        f"expected {int(np.prod(dims))}): {fix}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def read_idx(manual_dir=None) -> dict[str, "Split"]:
    """``{"train": Split, "test": Split}`` straight from the four official
    files with numpy, in the files' own order: no TensorFlow involved."""
    manual_dir = Path(manual_dir) if manual_dir is not None else default_manual_dir()
    verify_mnist_files(manual_dir)
    fix = _fix(manual_dir)
    splits = {}
    for name, (images_file, labels_file, n) in IDX_SPLITS.items():
        images = _idx_payload(manual_dir / images_file, IMAGES_MAGIC, (n, 28, 28), fix)
        labels = _idx_payload(manual_dir / labels_file, LABELS_MAGIC, (n,), fix)
        if labels.max() > 9:
            raise DataError(f"corrupt MNIST file {manual_dir / labels_file} "
                            f"(label {labels.max()} outside 0-9): {fix}")
        splits[name] = Split(images[..., None].copy(), labels.astype(np.int32))
    return splits


def check_files(source: str = "auto", data_dir=None, manual_dir=None) -> None:
    """Check the official files (checksums, IDX headers) before anything loads
    TensorFlow, so that a data error is one line and comes at once. Needed
    only where TensorFlow would load first and TFDS still has to prepare them:
    the ``idx`` source (or ``auto`` without TFDS) reads and checks them in
    :func:`load_mnist` without TensorFlow anyway."""
    tfds_installed = importlib.util.find_spec("tensorflow_datasets") is not None
    prepared = (_tfds_prepared_dir(data_dir) / "dataset_info.json").is_file()
    if source != "idx" and tfds_installed and not prepared:
        read_idx(manual_dir)


def tfds_available() -> bool:
    """Whether TensorFlow and TensorFlow Datasets import here."""
    try:
        tensorflow()
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_source(source: str) -> str:
    """``tfds`` or ``idx`` for ``source`` (``auto``: TFDS where it imports)."""
    if source == "auto":
        return "tfds" if tfds_available() else "idx"
    if source == "tfds" and not tfds_available():
        raise ConfigError("--data-source tfds needs tensorflow and tensorflow-datasets, which do "
                          "not import here; use --data-source idx")
    return source


TFDS_MNIST_VERSION = "3.0.1"


def _tfds_prepared_dir(data_dir) -> Path:
    """Where TFDS keeps (or will keep) the prepared ``mnist``: found without
    importing TensorFlow, so that bad files are reported before it loads."""
    root = data_dir or os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets"
    return Path(root) / "mnist" / TFDS_MNIST_VERSION


def _mnist_builder(data_dir):
    tensorflow()  # TF configured (accelerators hidden, banner filtered) before TFDS imports it
    import tensorflow_datasets as tfds
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS's warnings are not the user's errors
    return tfds.builder("mnist", data_dir=None if data_dir is None else str(data_dir))


@contextlib.contextmanager
def _preparing(data_dir):
    """Hold the lock on preparing TFDS's mnist in ``data_dir``: TFDS writes
    into a temporary folder and renames it, so two processes preparing the
    same folder at once collide ("Cannot rename ... already exists"). The
    second waits for the first, then finds the data prepared."""
    root = _tfds_prepared_dir(data_dir).parent.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / ".s7jax-mnist.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise DataError(f"cannot prepare TFDS mnist in {root}: {e.strerror or e}; "
                        "pass another --data-dir") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process preparing TFDS mnist in {root}", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def prepare_mnist(data_dir=None, manual_dir=None, rebuild: bool = False):
    """TFDS's ``mnist`` builder, prepared offline from the official files if
    needed (or ``rebuild``). The files are checked first, checksums and IDX
    headers, before TensorFlow loads when TFDS has not prepared them yet.
    Processes preparing the same folder take turns (:func:`_preparing`)."""
    manual_dir = Path(manual_dir) if manual_dir is not None else default_manual_dir()
    if rebuild or not (_tfds_prepared_dir(data_dir) / "dataset_info.json").is_file():
        read_idx(manual_dir)  # every check, in a fraction of a second, without TensorFlow
    builder = _mnist_builder(data_dir)
    import tensorflow_datasets as tfds

    if builder.is_prepared() and not rebuild:
        return builder
    with _preparing(data_dir):
        if rebuild:
            shutil.rmtree(builder.data_dir, ignore_errors=True)
        builder = _mnist_builder(data_dir)  # afresh: another process may have prepared it
        if not builder.is_prepared():
            print(f"preparing TFDS mnist in {builder.data_dir} from {manual_dir} (once)",
                  file=sys.stderr)
            config = tfds.download.DownloadConfig(manual_dir=str(manual_dir),
                                                  try_download_gcs=False)
            tfds.disable_progress_bar()  # a dozen nested bars for a 20-second job
            builder.download_and_prepare(download_config=config)
    return builder


def _read_tfds(builder) -> dict[str, "Split"]:
    splits = {}
    for name in ("train", "test"):
        arrays = builder.as_dataset(split=name, batch_size=-1, shuffle_files=False)
        splits[name] = Split(
            images=arrays["image"].numpy().astype(np.uint8),
            labels=arrays["label"].numpy().astype(np.int32),
        )
        if len(splits[name]) != IDX_SPLITS[name][2]:
            raise DataError(f"{len(splits[name])} {name} examples, expected {IDX_SPLITS[name][2]}")
    return splits


def load_mnist(data_dir=None, manual_dir=None, source: str = "auto") -> dict[str, Split]:
    """``{"train": Split, "test": Split}`` in host memory (47 MB + 8 MB: small
    enough to hold, which makes every epoch's shuffle a cheap index
    permutation), through TFDS or from the IDX files (``source``, see
    :func:`resolve_source`). A prepared TFDS folder that cannot be read is
    rebuilt once from the official files, and the run says so."""
    if resolve_source(source) == "idx":
        return read_idx(manual_dir)
    builder = prepare_mnist(data_dir, manual_dir)
    try:
        return _read_tfds(builder)
    except Exception as e:  # noqa: BLE001  (tf.errors.DataLossError and kin, or a short split)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        print(f"the prepared TFDS mnist in {builder.data_dir} cannot be read ({reason}); "
              "rebuilding it from the official files", file=sys.stderr)
    builder = prepare_mnist(data_dir, manual_dir, rebuild=True)
    try:
        return _read_tfds(builder)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"the TFDS mnist rebuilt in {builder.data_dir} cannot be read either "
                        f"({type(e).__name__}); delete that folder and check --manual-dir") from None


def normalize(images_uint8, compute_dtype=np.float32):
    """uint8 pixels -> float32 ``(x / 255 - MEAN) / STD`` (numpy or JAX arrays).

    Computed in float32 throughout by default, the same figures as the
    tf.data pipeline's; the BatchNorm calibration images of every recorded run
    were computed in float64 (``compute_dtype=np.float64``) and rounded once.
    """
    d = np.dtype(compute_dtype)
    x = images_uint8.astype(d) / d.type(255.0)
    return ((x - d.type(MEAN)) / d.type(STD)).astype(np.float32)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Training batches per epoch: the remainder is dropped (a fresh permutation
    every epoch means no image is left out for long), keeping one batch shape."""
    steps = num_examples // batch_size
    if steps == 0:
        raise DataError(f"batch size {batch_size} exceeds the {num_examples} training images")
    return steps


def train_dataset(
    split: Split,
    *,
    batch_size: int,
    seed: int,
    augment: AugmentConfig,
    epochs: int,
    start_step: int = 0,
    clean_epochs: int = 0,
):
    """A tf.data pipeline of ``epochs`` epochs of normalised training batches,
    ``{"image": float32 (B, 28, 28, 1), "label": int32 (B,)}``, starting at
    global step ``start_step``. Epochs ``>= epochs - clean_epochs`` are not
    augmented."""
    tf = tensorflow()
    steps = steps_per_epoch(len(split), batch_size)
    images = tf.constant(split.images)
    labels = tf.constant(split.labels)
    shuffle_seed = tf.constant([seed, 0], tf.int64)
    augment_seed = tf.constant([seed, 1], tf.int64)
    first_clean_epoch = epochs - clean_epochs

    def epoch_indices(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(len(split)), tf.random.experimental.stateless_fold_in(shuffle_seed, epoch))
        return tf.data.Dataset.from_tensor_slices(tf.reshape(order[: steps * batch_size], (steps, batch_size)))

    def make_batch(step, indices):
        batch = tf.cast(tf.gather(images, indices), tf.float32) / 255.0
        if augment.enabled:
            key = tf.random.experimental.stateless_fold_in(augment_seed, step)
            # Inside the branch, so that clean epochs skip the augmentation's work.
            batch = tf.cond(step // steps < first_clean_epoch,
                            lambda: augment_tf(batch, key, augment), lambda: batch)
        return {"image": (batch - MEAN) / STD, "label": tf.gather(labels, indices)}

    start_epoch = start_step // steps
    ds = tf.data.Dataset.range(start_epoch, epochs).flat_map(epoch_indices)
    ds = tf.data.Dataset.zip(tf.data.Dataset.range(start_epoch * steps, epochs * steps), ds)
    ds = ds.skip(start_step - start_epoch * steps)
    # Augmenting whole batches is ~4x faster than per example on a 2-core CPU.
    ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_batches(split: Split, *, batch_size: int) -> dict[str, np.ndarray]:
    """The whole split as normalised batches, stacked: ``image (n, B, 28, 28,
    1)``, ``label (n, B)``, ``mask (n, B)``. Every example is counted exactly
    once: the last batch is padded to full size and its padding masked out, so
    the eval step compiles once and counts nothing twice."""
    n = len(split)
    batches = -(-n // batch_size)
    pad = batches * batch_size - n
    images = np.concatenate([split.images, np.zeros((pad, *split.images.shape[1:]), np.uint8)])
    labels = np.concatenate([split.labels, np.zeros((pad,), np.int32)])
    return {"image": normalize(images).reshape(batches, batch_size, *images.shape[1:]),
            "label": labels.reshape(batches, batch_size),
            "mask": (np.arange(batches * batch_size) < n).reshape(batches, batch_size)}


def as_numpy(ds) -> Iterator[dict[str, np.ndarray]]:
    return ds.as_numpy_iterator()


@struct.dataclass
class DeviceTrainData:
    """The training split resident on the accelerator(s), batched and
    augmented there in JAX: no host pipeline, no host-to-device copies.

    A pytree (``flax.struct``), so it passes into jitted functions as an
    argument: the arrays as traced inputs, never baked into a program as
    constants. Like :func:`train_dataset`, each batch is a pure function of
    (seed, step): the epoch's permutation comes from ``fold_in(shuffle_key,
    epoch)`` and the augmentation from ``fold_in(augment_key, step)``. The two
    pipelines sample the same distributions with different random streams.
    """

    images: jax.Array  # uint8 (N, 28, 28, 1)
    labels: jax.Array  # int32 (N,)
    shuffle_key: jax.Array
    augment_key: jax.Array
    batch_size: int = struct.field(pytree_node=False)
    epochs: int = struct.field(pytree_node=False)
    first_clean_step: int = struct.field(pytree_node=False)
    augment: AugmentConfig = struct.field(pytree_node=False)

    @classmethod
    def create(cls, split: Split, *, batch_size: int, seed: int, augment: AugmentConfig,
               epochs: int, clean_epochs: int = 0, replicated=None) -> "DeviceTrainData":
        steps = steps_per_epoch(len(split), batch_size)
        shuffle_key, augment_key = cls.keys_for(seed)
        return cls(images=jax.device_put(split.images, replicated),
                   labels=jax.device_put(split.labels, replicated),
                   shuffle_key=shuffle_key, augment_key=augment_key, batch_size=batch_size,
                   epochs=epochs, first_clean_step=(epochs - clean_epochs) * steps,
                   augment=augment)

    @staticmethod
    def keys_for(seed: int) -> tuple[jax.Array, jax.Array]:
        """The (shuffle, augment) keys of ``seed``'s data."""
        return tuple(jax.random.split(jax.random.key(seed, impl="rbg")))

    def for_seeds(self, seeds) -> tuple["DeviceTrainData", "DeviceTrainData"]:
        """This data with each seed's own keys stacked along a leading axis, and
        the ``in_axes`` that ``jax.vmap`` needs for it (the images and labels,
        put on the device once, shared by every seed)."""
        keys = [self.keys_for(s) for s in seeds]
        stacked = dataclasses.replace(self, shuffle_key=jnp.stack([k for k, _ in keys]),
                                      augment_key=jnp.stack([k for _, k in keys]))
        axes = dataclasses.replace(self, images=None, labels=None, shuffle_key=0, augment_key=0)
        return stacked, axes

    @property
    def steps(self) -> int:
        """Batches per epoch (the remainder dropped, as :func:`steps_per_epoch`)."""
        return self.images.shape[0] // self.batch_size

    def order(self, epoch) -> jax.Array:
        """The epoch's permutation of the split (per seed under ``jax.vmap``)."""
        n = self.images.shape[0]
        return seedwise(lambda key, epoch: jax.random.permutation(jax.random.fold_in(key, epoch), n))(
            self.shuffle_key, epoch)

    def batch(self, order: jax.Array, step) -> dict[str, jax.Array]:
        """Global step ``step``'s batch, given its epoch's ``order`` (jit-able)."""
        i = step % self.steps
        idx = jax.lax.dynamic_slice_in_dim(order, i * self.batch_size, self.batch_size)
        batch = self.images[idx].astype(jnp.float32) / 255.0
        if self.augment.enabled:
            key = jax.random.fold_in(self.augment_key, step)
            batch = jax.lax.cond(step < self.first_clean_step,
                                 lambda b: augment_jax(b, key, self.augment), lambda b: b, batch)
        return {"image": (batch - MEAN) / STD, "label": self.labels[idx]}

    def batches(self, start_step: int = 0, sharding=None) -> Iterator[dict[str, jax.Array]]:
        """Batches from global step ``start_step`` to the end of the run, one
        jitted call each, laid out as ``sharding``."""
        permutation = jax.jit(DeviceTrainData.order)
        make = jax.jit(DeviceTrainData.batch, out_shardings=sharding)
        order = None
        for step in range(start_step, self.epochs * self.steps):
            if order is None or step % self.steps == 0:
                order = permutation(self, step // self.steps)
            yield make(self, order, step)

    def scan(self, fn: Callable[[Any, dict[str, jax.Array]], tuple[Any, Any]], carry: Any,
             epoch, first: int = 0) -> tuple[Any, Any]:
        """``lax.scan`` of ``fn(carry, batch) -> (carry, y)`` over the batches
        of steps ``first .. steps - 1`` of ``epoch``, inside whatever program
        calls it: the batches are exactly those :meth:`batches` yields."""
        order = self.order(epoch)
        steps = jnp.arange(first, self.steps) + epoch * self.steps
        return jax.lax.scan(lambda c, step: fn(c, self.batch(order, step)), carry, steps)
