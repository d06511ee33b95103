"""The augmentation ops: identities, references, and TF == JAX."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from s7jax.data import augment
from s7jax.data.augment import AugmentConfig
from s7jax.data.tf_cpu import tensorflow

pytestmark = pytest.mark.tfds  # every test here runs the TensorFlow side

try:
    tf = tensorflow()
except ImportError:  # a GPU machine, a TPU runtime
    pytest.skip("needs tensorflow and tensorflow-datasets", allow_module_level=True)


def digits(n=4, seed=0):
    """Blurry blobs in [0, 1] with zero borders, like MNIST digits."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 28, 28, 1), np.float32)
    x[:, 6:22, 8:20, 0] = rng.uniform(0, 1, size=(n, 16, 12))
    return x


def rotate_both(x, angles):
    a = np.asarray(angles, np.float32)
    return (augment.rotate_tf(tf.constant(x), tf.constant(a)).numpy(),
            np.asarray(augment.rotate_jax(jnp.asarray(x), jnp.asarray(a))))


def test_zero_angle_and_unit_factors_are_identity():
    x = digits()
    for out in rotate_both(x, np.zeros(len(x))):
        np.testing.assert_allclose(out, x, atol=1e-6)
    ones = np.ones(len(x), np.float32)
    np.testing.assert_allclose(augment.brightness_contrast_tf(tf.constant(x), ones, ones), x, atol=1e-6)
    np.testing.assert_allclose(augment.brightness_contrast_jax(jnp.asarray(x), ones, ones), x, atol=1e-6)


def test_ninety_degrees_is_rot90():
    x = digits()
    for out in rotate_both(x, np.full(len(x), 90.0)):
        np.testing.assert_allclose(out, np.rot90(x, k=1, axes=(1, 2)), atol=1e-5)


@pytest.mark.parametrize("angle", [-7.0, 3.3, 6.9])
def test_small_rotation_matches_scipy(angle):
    x = digits(2)
    expected = np.stack([scipy.ndimage.rotate(img, angle, axes=(1, 0), reshape=False, order=1,
                                              mode="constant", cval=0.0) for img in x])
    for out in rotate_both(x, np.full(len(x), angle)):
        np.testing.assert_allclose(out, expected, atol=1e-5)


def test_brightness_contrast_formulas():
    x = digits(3)
    b = np.array([0.8, 1.0, 1.2], np.float32)
    c = np.array([1.2, 0.8, 1.0], np.float32)
    bright = np.clip(x * b[:, None, None, None], 0, 1)
    mean = bright.mean(axis=(1, 2, 3), keepdims=True)
    expected = np.clip(mean + c[:, None, None, None] * (bright - mean), 0, 1)
    np.testing.assert_allclose(augment.brightness_contrast_tf(tf.constant(x), b, c), expected, atol=1e-6)
    np.testing.assert_allclose(augment.brightness_contrast_jax(jnp.asarray(x), b, c), expected, atol=1e-6)


def test_tf_and_jax_agree_on_random_parameters():
    x = digits(16, seed=1)
    rng = np.random.default_rng(2)
    angles = rng.uniform(-7, 7, 16).astype(np.float32)
    b, c = rng.uniform(0.8, 1.2, (2, 16)).astype(np.float32)
    out_tf = augment.brightness_contrast_tf(augment.rotate_tf(tf.constant(x), angles), b, c).numpy()
    out_jax = augment.brightness_contrast_jax(augment.rotate_jax(jnp.asarray(x), angles), b, c)
    np.testing.assert_allclose(out_tf, out_jax, atol=1e-5)


def test_same_op_eagerly_and_inside_tf_data():
    x = digits(8)
    config = AugmentConfig()
    seed = tf.constant([3, 4], tf.int64)
    eager = augment.augment_tf(tf.constant(x), seed, config).numpy()
    ds = tf.data.Dataset.from_tensors(x).map(lambda b: augment.augment_tf(b, seed, config))
    np.testing.assert_array_equal(next(iter(ds)).numpy(), eager)
    assert not np.allclose(eager, x)


@pytest.mark.parametrize("sample", ["tf", "jax"])
def test_parameters_are_drawn_from_the_configured_ranges(sample):
    config = AugmentConfig(degrees=5.0, brightness=0.1, contrast=0.3)
    if sample == "tf":
        draws = [t.numpy() for t in augment.sample_tf(tf.constant([0, 1], tf.int64), 4096, config)]
    else:
        draws = [np.asarray(t) for t in augment.sample_jax(jax.random.key(0), 4096, config)]
    for values, (low, high) in zip(draws, [(-5, 5), (0.9, 1.1), (0.7, 1.3)]):
        assert low <= values.min() < low + 0.01 * (high - low)
        assert high - 0.01 * (high - low) < values.max() <= high
        assert abs(values.mean() - (low + high) / 2) < 0.02 * (high - low)


def test_disabled_ops_leave_images_alone():
    x = digits(4)
    none = AugmentConfig(0.0, 0.0, 0.0)
    np.testing.assert_array_equal(
        augment.augment_tf(tf.constant(x), tf.constant([0, 0], tf.int64), none).numpy(), x)
    np.testing.assert_array_equal(augment.augment_jax(jnp.asarray(x), jax.random.key(0), none), x)


class JaxAugmentVariantsTest(chex.TestCase):
    """The JAX side eagerly and under jit (chex.variants): the same exact
    properties both ways, and a malformed batch named by chex."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_rotation_and_factors(self):
        x = np.random.default_rng(0).uniform(size=(2, 28, 28, 1)).astype(np.float32)
        rotate = self.variant(augment.rotate_jax)
        chex.assert_trees_all_close(rotate(jnp.asarray(x), jnp.full((2,), 90.0)),
                                    np.rot90(x, k=1, axes=(1, 2)), atol=1e-5)
        chex.assert_trees_all_close(rotate(jnp.asarray(x), jnp.zeros(2)), x, atol=1e-6)
        ones = jnp.ones(2)
        adjust = self.variant(augment.brightness_contrast_jax)
        chex.assert_trees_all_close(adjust(jnp.asarray(x), ones, ones), x, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_a_batch_without_its_channel_axis_is_named(self):
        run = self.variant(lambda x, k: augment.augment_jax(x, k, AugmentConfig()))
        with self.assertRaisesRegex(AssertionError, r"augment_jax images: \(B, H, W, C\)"):
            run(jnp.zeros((2, 28, 28)), jax.random.key(0, impl="rbg"))
