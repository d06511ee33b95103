"""The training augmentation, twice: in TensorFlow for tf.data, and in JAX for
data kept on the accelerator. Both rotate about the image centre (bilinear,
black fill), then scale brightness and contrast, each clipped to [0, 1] as
torchvision's ColorJitter (the original study's) does. Given the same angles
and factors the two produce the same images to 1e-5 (tested), and both draw
from the same distributions."""

from __future__ import annotations

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from s7jax.models.seedwise import seedwise
from s7jax.data.tf_cpu import tensorflow


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the augmentation; 0 disables an op."""

    degrees: float = dataclasses.field(
        default=7.0, metadata={"help": "rotation angle ~ U(-x, x) degrees (0 disables)"})
    brightness: float = dataclasses.field(
        default=0.2, metadata={"help": "brightness factor ~ U(1 - x, 1 + x) (0 disables)"})
    contrast: float = dataclasses.field(
        default=0.2, metadata={"help": "contrast factor ~ U(1 - x, 1 + x) (0 disables)"})

    @property
    def enabled(self) -> bool:
        return bool(self.degrees or self.brightness or self.contrast)


NO_AUGMENT = AugmentConfig(0.0, 0.0, 0.0)


def rotation_matrix(angles_deg, height: int, width: int, xp=np):
    """Per image, output pixel (x, y) -> input ``(a0 x + a1 y + a2, b0 x + b1 y
    + b2)`` as rows ``[a0, a1, a2, b0, b1, b2, 0, 0]`` (TensorFlow's layout):
    rotating counter-clockwise by t on screen (y down) samples the point
    rotated by -t about the centre."""
    t = angles_deg * (math.pi / 180.0)
    cos, sin = xp.cos(t), xp.sin(t)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    a2 = cx - cos * cx + sin * cy
    b2 = cy - sin * cx - cos * cy
    zero = xp.zeros_like(t)
    return xp.stack([cos, -sin, a2, sin, cos, b2, zero, zero], axis=-1)


# TensorFlow, for tf.data.


def rotate_tf(images, angles_deg):
    """Rotate a batch ``(B, H, W, C)`` float32 by per-image angles (degrees)."""
    tf = tensorflow()
    tnp = tf.experimental.numpy

    height, width = images.shape[1], images.shape[2]
    transforms = rotation_matrix(tf.cast(angles_deg, tf.float32), height, width, xp=tnp)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.constant([height, width], tf.int32),
        fill_value=tf.constant(0.0, tf.float32),
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def brightness_contrast_tf(images, brightness, contrast):
    """Per-image brightness then contrast factors, shape ``(B,)`` each."""
    tf = tensorflow()

    images = tf.clip_by_value(images * brightness[:, None, None, None], 0.0, 1.0)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    return tf.clip_by_value(mean + contrast[:, None, None, None] * (images - mean), 0.0, 1.0)


def sample_tf(seed, batch_size, config: AugmentConfig):
    """Angles and factors for one batch from a stateless ``[2]`` seed."""
    tf = tensorflow()

    seeds = tf.random.experimental.stateless_split(seed, 3)

    def uniform(i, low, high):
        return tf.random.stateless_uniform([batch_size], seeds[i], low, high, tf.float32)

    return (
        uniform(0, -config.degrees, config.degrees),
        uniform(1, 1.0 - config.brightness, 1.0 + config.brightness),
        uniform(2, 1.0 - config.contrast, 1.0 + config.contrast),
    )


def augment_tf(images, seed, config: AugmentConfig):
    """Augment a batch ``(B, 28, 28, 1)`` in [0, 1] with a stateless seed."""
    angles, brightness, contrast = sample_tf(seed, images.shape[0], config)
    if config.degrees:
        images = rotate_tf(images, angles)
    if config.brightness or config.contrast:
        images = brightness_contrast_tf(images, brightness, contrast)
    return images


# JAX, for data on the accelerator.


def rotate_jax(images: jax.Array, angles_deg: jax.Array) -> jax.Array:
    """Rotate a batch ``(B, H, W, C)`` float32 by per-image angles (degrees)."""
    _, height, width, _ = images.shape
    m = rotation_matrix(angles_deg, height, width, xp=jnp)
    ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                          jnp.arange(width, dtype=jnp.float32), indexing="ij")

    def one(image_hwc, m):
        x_in = m[0] * xs + m[1] * ys + m[2]
        y_in = m[3] * xs + m[4] * ys + m[5]
        sample = lambda channel: jax.scipy.ndimage.map_coordinates(  # noqa: E731
            channel, [y_in, x_in], order=1, mode="constant", cval=0.0)
        return jax.vmap(sample, in_axes=-1, out_axes=-1)(image_hwc)

    return jax.vmap(one)(images, m)


def brightness_contrast_jax(images: jax.Array, brightness: jax.Array, contrast: jax.Array):
    """Per-image brightness then contrast factors, shape ``(B,)`` each."""
    images = jnp.clip(images * brightness[:, None, None, None], 0.0, 1.0)
    mean = jnp.mean(images, axis=(1, 2, 3), keepdims=True)
    return jnp.clip(mean + contrast[:, None, None, None] * (images - mean), 0.0, 1.0)


def sample_jax(key: jax.Array, batch_size: int, config: AugmentConfig):
    """Angles and factors for one batch, each seed's own under ``jax.vmap``."""

    def uniform(k, low, high):
        return jax.random.uniform(k, (batch_size,), jnp.float32, low, high)

    def draw(key):
        k_angle, k_bright, k_contrast = jax.random.split(key, 3)
        return (
            uniform(k_angle, -config.degrees, config.degrees),
            uniform(k_bright, 1.0 - config.brightness, 1.0 + config.brightness),
            uniform(k_contrast, 1.0 - config.contrast, 1.0 + config.contrast),
        )

    return seedwise(draw)(key)


def augment_jax(images: jax.Array, key: jax.Array, config: AugmentConfig) -> jax.Array:
    """Augment a batch ``(B, 28, 28, 1)`` in [0, 1] with a JAX key."""
    chex.assert_rank(images, 4, custom_message="augment_jax images: (B, H, W, C)")
    chex.assert_type(images, float, custom_message="augment_jax images: floats in [0, 1]")
    angles, brightness, contrast = sample_jax(key, images.shape[0], config)
    if config.degrees:
        images = rotate_jax(images, angles)
    if config.brightness or config.contrast:
        images = brightness_contrast_jax(images, brightness, contrast)
    return images
