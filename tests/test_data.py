"""MNIST through TFDS offline, file verification, and the pipelines."""

from __future__ import annotations

import hashlib
import shutil

import jax
import numpy as np
import pytest

from s7jax import data
from s7jax.data.augment import NO_AUGMENT, AugmentConfig
from s7jax.errors import DataError


def test_offline_preparation_gives_both_splits(mnist):
    train, test = mnist["train"], mnist["test"]
    assert (len(train), len(test)) == (60_000, 10_000)
    for split in (train, test):
        assert split.images.shape[1:] == (28, 28, 1) and split.images.dtype == np.uint8
        assert split.labels.dtype == np.int32 and set(np.unique(split.labels)) == set(range(10))
    # The training-set statistics the normalisation assumes.
    pixels = train.images.astype(np.float64) / 255.0
    assert abs(pixels.mean() - data.MEAN) < 1e-4 and abs(pixels.std() - data.STD) < 1e-4


@pytest.fixture
def manual_copy(tmp_path):
    copy = tmp_path / "mnist"
    shutil.copytree(data.default_manual_dir(), copy)
    for f in copy.iterdir():
        f.chmod(0o644)
    return copy


def test_vendored_files_verify():
    data.verify_mnist_files(data.default_manual_dir())


def test_corrupt_file_is_caught_before_tfds(manual_copy, tmp_path):
    target = manual_copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(target.read_bytes())
    raw[100] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupt MNIST file .*t10k-labels-idx1-ubyte.gz"):
        data.prepare_mnist(data_dir=tmp_path / "tfds", manual_dir=manual_copy)
    assert not (tmp_path / "tfds" / "mnist").exists()  # TFDS never started


def test_missing_file_is_caught_before_tfds(manual_copy, tmp_path):
    (manual_copy / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing MNIST file .*train-images-idx3-ubyte.gz"):
        data.prepare_mnist(data_dir=tmp_path / "tfds", manual_dir=manual_copy)
    assert not (tmp_path / "tfds" / "mnist").exists()


def test_error_messages_are_one_line(manual_copy):
    (manual_copy / "SHA256SUMS").unlink()
    with pytest.raises(DataError) as err:
        data.verify_mnist_files(manual_copy)
    assert "\n" not in str(err.value)


def take(ds, n):
    it = ds.as_numpy_iterator()
    return [next(it) for _ in range(n)]


def small(mnist, n=640):
    return mnist["train"].subset(n)


@pytest.mark.tfds
def test_train_batches_shapes_and_normalisation(mnist):
    (batch,) = take(data.train_dataset(small(mnist), batch_size=64, seed=0, augment=NO_AUGMENT,
                                       epochs=1), 1)
    assert batch["image"].shape == (64, 28, 28, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (64,)
    lo, hi = (0 - data.MEAN) / data.STD, (1 - data.MEAN) / data.STD
    assert lo - 1e-5 <= batch["image"].min() and batch["image"].max() <= hi + 1e-5


@pytest.mark.tfds
def test_an_epoch_is_a_permutation_without_augmentation(mnist):
    split = small(mnist)
    batches = take(data.train_dataset(split, batch_size=64, seed=3, augment=NO_AUGMENT, epochs=1), 10)
    seen = np.concatenate([b["image"] for b in batches])
    expected = ((split.images / 255.0 - data.MEAN) / data.STD).astype(np.float32)
    key = lambda x: np.sort(x.reshape(len(x), -1).sum(axis=1))  # noqa: E731
    np.testing.assert_allclose(key(seen), key(expected), atol=1e-2)


@pytest.mark.tfds
def test_same_seed_same_batches_different_seed_different(mnist):
    make = lambda seed: take(data.train_dataset(  # noqa: E731
        small(mnist), batch_size=64, seed=seed, augment=AugmentConfig(), epochs=2), 12)
    a, b, c = make(1), make(1), make(2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert not np.array_equal(a[0]["label"], c[0]["label"])
    # Epochs differ too: a fresh permutation each epoch.
    assert not np.array_equal(a[0]["label"], a[10]["label"])


@pytest.mark.tfds
def test_starting_mid_run_gives_the_remaining_batches(mnist):
    make = lambda start: take(data.train_dataset(  # noqa: E731
        small(mnist), batch_size=64, seed=5, augment=AugmentConfig(), epochs=2,
        start_step=start), 20 - start)
    full, tail = make(0), make(13)
    for x, y in zip(full[13:], tail):
        np.testing.assert_array_equal(x["image"], y["image"])


@pytest.mark.tfds
def test_clean_epochs_are_not_augmented(mnist):
    split = small(mnist, 128)
    aug = AugmentConfig()
    mixed = take(data.train_dataset(split, batch_size=128, seed=0, augment=aug, epochs=2,
                                    clean_epochs=1), 2)
    clean = take(data.train_dataset(split, batch_size=128, seed=0, augment=NO_AUGMENT, epochs=2), 2)
    assert not np.allclose(mixed[0]["image"], clean[0]["image"])
    np.testing.assert_array_equal(mixed[1]["image"], clean[1]["image"])


@pytest.mark.parametrize("batch_size", [1000, 768, 10_000])
def test_eval_counts_every_test_image_once(mnist, batch_size):
    test = mnist["test"]
    batches = data.eval_batches(test, batch_size=batch_size)
    assert batches["image"].shape[1:] == (batch_size, 28, 28, 1)  # one shape: one compile
    mask = batches["mask"].reshape(-1)
    labels = batches["label"].reshape(-1)[mask]
    assert mask.sum() == 10_000
    np.testing.assert_array_equal(labels, test.labels)
    first = batches["image"][0, :5]
    np.testing.assert_allclose(first, (test.images[:5] / 255.0 - data.MEAN) / data.STD, rtol=1e-5)


def test_device_pipeline_is_deterministic_and_resumable(mnist):
    split = small(mnist, 256)
    make = lambda seed: data.DeviceTrainData.create(  # noqa: E731
        split, batch_size=64, seed=seed, augment=AugmentConfig(), epochs=2)
    full = list(make(0).batches())
    again = list(make(0).batches(5))
    assert len(full) == 8
    for x, y in zip(full[5:], again):
        np.testing.assert_array_equal(x["image"], y["image"])
    other = next(make(1).batches())
    assert not np.array_equal(full[0]["label"], other["label"])
    # One epoch is a permutation of the split.
    labels = np.sort(np.concatenate([np.asarray(b["label"]) for b in full[:4]]))
    np.testing.assert_array_equal(labels, np.sort(split.labels))


def test_an_epoch_scan_sees_exactly_the_device_pipelines_batches(mnist):
    """The epoch-per-call loop folds its steps over ``DeviceTrainData.scan``:
    the same batches, bit for bit, as one call per batch, in both an augmented
    and a clean epoch, and from a step inside an epoch (a resume)."""
    source = data.DeviceTrainData.create(small(mnist, 256), batch_size=64, seed=3,
                                         augment=AugmentConfig(), epochs=2, clean_epochs=1)
    per_call = list(source.batches())
    collect = jax.jit(lambda src, epoch, first: src.scan(lambda c, b: (c, b), 0, epoch, first)[1],
                      static_argnums=2)
    for epoch, first in ((0, 0), (1, 0), (0, 3)):
        scanned = collect(source, epoch, first)
        for i, batch in enumerate(per_call[epoch * 4 + first:(epoch + 1) * 4]):
            for key in ("image", "label"):
                np.testing.assert_array_equal(scanned[key][i], batch[key])


def _by_content(split):
    """The split's (image, label) pairs in an order given by their content."""
    keys = [hashlib.sha256(image.tobytes() + bytes([label])).digest()
            for image, label in zip(split.images, split.labels)]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return split.images[order], split.labels[order]


@pytest.mark.tfds
def test_idx_files_read_with_numpy_equal_tfds_as_sets(mnist):
    """TFDS stores the examples in its own order: compare matched sets."""
    idx = data.read_idx()
    for name in ("train", "test"):
        assert idx[name].images.dtype == np.uint8 and idx[name].labels.dtype == np.int32
        tfds_images, tfds_labels = _by_content(mnist[name])
        idx_images, idx_labels = _by_content(idx[name])
        np.testing.assert_array_equal(idx_images, tfds_images)
        np.testing.assert_array_equal(idx_labels, tfds_labels)


def _replace(manual_copy, name, raw_gz: bytes):
    """Write ``raw_gz`` as ``name`` with a matching SHA256SUMS line, so only
    the IDX checks can catch it."""
    (manual_copy / name).write_bytes(raw_gz)
    sums = manual_copy / "SHA256SUMS"
    lines = [line for line in sums.read_text().splitlines() if not line.endswith(name)]
    sums.write_text("\n".join(lines + [f"{hashlib.sha256(raw_gz).hexdigest()}  {name}"]) + "\n")


@pytest.mark.parametrize("damage,message", [
    (lambda raw: raw[:len(raw) // 2], r"data bytes, expected 7840000"),
    (lambda raw: b"\x00\x00\x08\x01" + raw[4:], r"IDX magic number 0x00000801, expected 0x00000803"),
    (lambda raw: raw[:8], r"shorter than its IDX header"),
])
def test_idx_reader_rejects_damaged_files_with_matching_checksums(manual_copy, damage, message):
    import gzip

    name = "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress((manual_copy / name).read_bytes())
    _replace(manual_copy, name, gzip.compress(damage(raw)))
    with pytest.raises(DataError, match=message) as err:
        data.read_idx(manual_copy)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_idx_reader_rejects_a_file_that_is_not_gzip(manual_copy):
    name = "train-labels-idx1-ubyte.gz"
    _replace(manual_copy, name, b"not a gzip file")
    with pytest.raises(DataError, match=f"corrupt MNIST file .*{name} \\(not a complete gzip"):
        data.read_idx(manual_copy)
