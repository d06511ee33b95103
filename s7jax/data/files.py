"""The ``idx`` source: MNIST's four official files, checked against
``SHA256SUMS`` (given a missing file, TFDS would try for minutes to download
it) and read with numpy into one :class:`Split` per split."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
from pathlib import Path

import numpy as np

from s7jax.errors import DataError

# Split -> (images file, labels file, examples).
IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}
MNIST_FILES = tuple(name for split in IDX_SPLITS.values() for name in split[:2])
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801  # IDX: uint8 data, 3 or 1 dimensions


@dataclasses.dataclass(frozen=True)
class Split:
    """One split in host memory: uint8 images ``(N, 28, 28, 1)`` and int32 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None) -> "Split":
        if n is None:
            return self
        if not 0 < n <= len(self):
            raise DataError(f"subset size must be in 1..{len(self)}, got {n}")
        return Split(self.images[:n], self.labels[:n])


def default_manual_dir() -> Path:
    """``$S7JAX_MNIST_DIR``, else the copy inside the package."""
    env = os.environ.get("S7JAX_MNIST_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "mnist_files"


def _fix(manual_dir: Path) -> str:
    hint = "" if manual_dir != default_manual_dir() else " or pass --manual-dir"
    return f"restore the official MNIST files in {manual_dir} (see s7jax/mnist_files/README.md){hint}"


def verify_mnist_files(manual_dir: str | os.PathLike) -> None:
    manual_dir = Path(manual_dir)
    fix = _fix(manual_dir)
    sums_file = manual_dir / "SHA256SUMS"
    if not sums_file.is_file():
        raise DataError(f"missing {sums_file}: {fix}")
    try:  # a ``sha256sum`` listing
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
    for name in MNIST_FILES:
        path = manual_dir / name
        if not path.is_file():
            raise DataError(f"missing MNIST file {path}: {fix}")
        if name not in expected:
            raise DataError(f"{sums_file} has no checksum for {name}: {fix}")
        if hashlib.sha256(path.read_bytes()).hexdigest() != expected[name]:
            raise DataError(f"corrupt MNIST file {path} (SHA-256 mismatch): {fix}")


def _idx_payload(path: Path, magic: int, dims: tuple[int, ...], fix: str) -> np.ndarray:
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
    """``{"train": Split, "test": Split}`` from the official files, in their order."""
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
