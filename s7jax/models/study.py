"""The six MNIST classifiers of the study, in Flax Linen, layer for layer,
and model7 beyond it: NHWC images ``(B, 28, 28, 1)`` in, log-probabilities
``(B, 10)`` out; in training pass ``train=True``, ``mutable=["batch_stats"]``
and a ``{"dropout": key}`` rng. The study's spatial sizes are
28 -> 14 -> 7 -> 5 -> 3 -> 1, and model7's too; some of its trial designs
average a 7x7 or 3x3 map into the logits instead."""

from __future__ import annotations

import functools
from collections.abc import Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from s7jax.models import ops
from s7jax.errors import ConfigError

# Every convolution of the study is 3x3, stride 1; only padding and bias vary.
# `ops.conv` is lax's convolution with gradients XLA:CPU runs fast in a loop.
Conv3x3 = functools.partial(nn.Conv, kernel_size=(3, 3), strides=(1, 1),
                            conv_general_dilated=ops.conv)
SAME, VALID = 1, 0

# PyTorch's BatchNorm2d(eps=1e-5, momentum=0.1) weighs a new batch by 0.1;
# Flax's `momentum` weighs the old running average, hence 0.9.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


class MaxPool(nn.Module):
    """2x2 max pooling, stride 2; a module so that it is named in summaries."""

    @nn.compact
    def __call__(self, x):
        return ops.max_pool_2x2(x)


def _batch_norm(index: int, train: bool, momentum: float) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=BN_EPSILON,
                        name=f"bn{index}")


def _log_softmax_head(x: jax.Array) -> jax.Array:
    """(B, 1, 1, 10) map -> (B, 10) log-probabilities."""
    return nn.log_softmax(x.reshape((x.shape[0], -1)))


class _PlainNet(nn.Module):
    """Models 1 and 2: seven convs, ReLU after the first six, no BN, no dropout."""

    channels: tuple[int, ...]

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # no BN, no dropout: training and eval compute the same thing
        c = self.channels
        x = nn.relu(Conv3x3(c[0], padding=SAME, name="conv1")(x))
        x = nn.relu(Conv3x3(c[1], padding=SAME, name="conv2")(x))
        x = MaxPool(name="pool1")(x)
        x = nn.relu(Conv3x3(c[2], padding=SAME, name="conv3")(x))
        x = nn.relu(Conv3x3(c[3], padding=SAME, name="conv4")(x))
        x = MaxPool(name="pool2")(x)
        x = nn.relu(Conv3x3(c[4], padding=VALID, name="conv5")(x))
        x = nn.relu(Conv3x3(c[5], padding=VALID, name="conv6")(x))
        x = Conv3x3(10, padding=VALID, name="conv7")(x)
        return _log_softmax_head(x)


class Model1(_PlainNet):
    """The heavy baseline: 6,379,786 parameters."""

    channels: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)


class Model2(_PlainNet):
    """Model 1's layout with a few channels: 21,798 parameters."""

    channels: tuple[int, ...] = (8, 16, 24, 28, 24, 16)


class _BatchNormNet(nn.Module):
    """Models 3 to 5: conv-BN-ReLU for convs 1-5, conv 6 with ReLU, conv 7
    bare; ``dropout_rate`` right after each of the two pools (model 4), or
    with ``drop_after_convs`` after the ReLU of each of convs 1-5 (model 5)."""

    channels: tuple[int, ...]
    dropout_rate: float = 0.0
    drop_after_convs: bool = False
    bn_momentum: float = BN_MOMENTUM

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = self.channels

        def drop(x, i, here):
            if self.dropout_rate and here:
                x = ops.Dropout(self.dropout_rate, deterministic=not train, name=f"drop{i}")(x)
            return x

        def block(x, i):
            x = Conv3x3(c[i - 1], padding=SAME if i <= 4 else VALID, name=f"conv{i}")(x)
            return drop(nn.relu(_batch_norm(i, train, self.bn_momentum)(x)), i,
                        self.drop_after_convs)

        def pool_then_drop(x, i):
            return drop(MaxPool(name=f"pool{i}")(x), i, not self.drop_after_convs)

        x = pool_then_drop(block(block(x, 1), 2), 1)
        x = pool_then_drop(block(block(x, 3), 4), 2)
        x = block(x, 5)
        x = nn.relu(Conv3x3(c[5], padding=VALID, name="conv6")(x))
        x = Conv3x3(10, padding=VALID, name="conv7")(x)
        return _log_softmax_head(x)


class Model3(_BatchNormNet):
    """Batch normalisation after convs 1-5: 17,354 parameters."""

    channels: tuple[int, ...] = (8, 16, 20, 24, 20, 16)


class Model4(_BatchNormNet):
    """Model 3 plus drop(0.3) after each pool: 14,450 parameters."""

    channels: tuple[int, ...] = (8, 16, 20, 16, 20, 16)
    dropout_rate: float = 0.3


class Model5(_BatchNormNet):
    """drop(0.2) after the ReLU of every BN conv: 12,122 parameters."""

    channels: tuple[int, ...] = (8, 16, 12, 16, 20, 16)
    dropout_rate: float = 0.2
    drop_after_convs: bool = True


class Model6(nn.Module):
    """Under 8,000 parameters (7,664). Convs 1-5 have no bias (the BN shift
    that follows makes one redundant); drop(0.1) after the ReLU of convs 1-4."""

    dropout_rate: float = 0.1
    bn_momentum: float = BN_MOMENTUM

    @nn.compact
    def __call__(self, x, train: bool = False):
        def block(x, i, features, padding, dropout=True):
            x = Conv3x3(features, padding=padding, use_bias=False, name=f"conv{i}")(x)
            x = nn.relu(_batch_norm(i, train, self.bn_momentum)(x))
            if dropout:
                x = ops.Dropout(self.dropout_rate, deterministic=not train, name=f"drop{i}")(x)
            return x

        x = block(x, 1, 8, SAME)
        x = block(x, 2, 12, SAME)
        x = MaxPool(name="pool1")(x)
        x = block(x, 3, 16, SAME)
        x = block(x, 4, 10, SAME)
        x = MaxPool(name="pool2")(x)
        x = block(x, 5, 14, VALID, dropout=False)
        x = Conv3x3(10, padding=VALID, name="conv6")(x)  # no activation
        x = Conv3x3(10, padding=VALID, name="conv7")(x)
        return _log_softmax_head(x)


class TinyNet(nn.Module):
    """model7, beyond the study (``BEYOND`` lists the designs tried): bias-free
    conv-BN-ReLU blocks (``activation`` may replace ReLU; dropout after each
    with ``dropout_rate``), a 2x2 max-pool after every second; at 7x7 the
    ``tail``'s unpadded blocks and a 3x3 conv, or a ``head`` block and a 1x1
    conv, or a 3x3 conv, to 10 maps whose global average is the logits. That
    conv keeps its bias and has no BN: BN there held the logits to a unit
    scale (a first run stalled near 98.8%). With ``residual``, a block whose
    input has its width adds that input (centre-cropped after an unpadded
    conv) before the activation: a shortcut that costs no parameter."""

    channels: tuple[int, ...] = (6, 6, 10, 8)
    head: int | None = None
    tail: tuple[int, ...] = (10, 8)
    dropout_rate: float = 0.0
    bn_momentum: float = BN_MOMENTUM
    activation: Callable[[jax.Array], jax.Array] = nn.relu
    residual: bool = False

    @property
    def layout(self) -> str:
        """The channels of the padded blocks at 28x28 / 14x14, what follows at 7x7, the
        dropout, and the activation where it is not ReLU."""
        left = 7 - 2 * (len(self.tail) + 1)  # the map the last unpadded conv leaves
        at7 = (f"unpadded {', '.join(map(str, self.tail))}, then 10"
               + (f", averaged over {left}x{left}" if left > 1 else "") if self.tail else
               f"{self.head}, 1x1 to 10, averaged" if self.head else "3x3 to 10, averaged")
        return (f"{', '.join(map(str, self.channels[:2]))} / "
                f"{', '.join(map(str, self.channels[2:]))} / {at7}; dropout {self.dropout_rate:g}"
                + ("" if self.activation is nn.relu else f"; {self.activation.__name__}")
                + ("; residual" if self.residual else ""))

    @nn.compact
    def __call__(self, x, train: bool = False):
        def block(x, i, features, padding=SAME):
            y = Conv3x3(features, padding=padding, use_bias=False, name=f"conv{i}")(x)
            y = _batch_norm(i, train, self.bn_momentum)(y)
            if self.residual and x.shape[-1] == features:
                y = y + (x if padding == SAME else x[:, 1:-1, 1:-1])
            return self.activation(y)

        for i, features in enumerate(self.channels, 1):
            x = block(x, i, features)
            if self.dropout_rate:
                x = ops.Dropout(self.dropout_rate, deterministic=not train, name=f"drop{i}")(x)
            if i % 2 == 0:
                x = MaxPool(name=f"pool{i // 2}")(x)
        i = len(self.channels) + 1
        if self.head:
            x = block(x, i, self.head)
            x = nn.Conv(10, (1, 1), conv_general_dilated=ops.conv, name=f"conv{i + 1}")(x)
        elif self.tail:
            for i, features in enumerate(self.tail, i):
                x = block(x, i, features, VALID)
            x = Conv3x3(10, padding=VALID, name=f"conv{i + 1}")(x)
        else:
            x = Conv3x3(10, padding=SAME, name=f"conv{i}")(x)
        return nn.log_softmax(GlobalAveragePool(name="gap1")(x))


class DepthwiseConv3x3(nn.Module):
    """3x3 depthwise convolution, zero padding 1, no bias (``ops.depthwise_conv_3x3``)."""

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, 1, x.shape[-1]))
        return ops.depthwise_conv_3x3(x, kernel)


class SeparableNet(nn.Module):
    """model7-h, a trial design: a 3x3 conv-BN-ReLU of ``stem`` maps, then
    depthwise-separable blocks (a 3x3 depthwise conv, a 1x1 conv to
    ``channels[i]`` maps, BN, ReLU), a 2x2 max-pool after the first and third,
    and a 1x1 conv to 10 maps averaged into the logits. A separable block
    costs 9 C_in + C_in C_out weights where a 3x3 conv costs 9 C_in C_out, so
    it is three times as wide for the parameters."""

    stem: int = 8
    channels: tuple[int, ...] = (16, 24, 32, 32)
    dropout_rate: float = 0.0
    bn_momentum: float = BN_MOMENTUM

    @property
    def layout(self) -> str:
        """As ``TinyNet.layout``: the stem, the separable blocks by resolution, the head."""
        c = self.channels
        return (f"{self.stem}, separable {c[0]} / separable {c[1]}, {c[2]} / separable "
                f"{', '.join(map(str, c[3:]))}, 1x1 to 10, averaged; dropout {self.dropout_rate:g}")

    @nn.compact
    def __call__(self, x, train: bool = False):
        def finish(x, i):
            x = nn.relu(_batch_norm(i, train, self.bn_momentum)(x))
            if self.dropout_rate:
                x = ops.Dropout(self.dropout_rate, deterministic=not train, name=f"drop{i}")(x)
            return x

        x = finish(Conv3x3(self.stem, padding=SAME, use_bias=False, name="conv1")(x), 1)
        for i, features in enumerate(self.channels, 2):
            x = DepthwiseConv3x3(name=f"depthwise{i}")(x)
            # A dense layer on the channel axis of NHWC maps is a 1x1 conv.
            x = nn.Dense(features, use_bias=False, name=f"pointwise{i}")(x)
            x = finish(x, i)
            if i in (2, 4):
                x = MaxPool(name=f"pool{i // 2}")(x)
        x = nn.Dense(10, name="head")(x)
        return nn.log_softmax(GlobalAveragePool(name="gap1")(x))


class GlobalAveragePool(nn.Module):
    """(B, H, W, C) -> (B, C); a module so that it is named in summaries."""

    @nn.compact
    def __call__(self, x):
        return jnp.mean(x, axis=(1, 2))


STUDY: dict[str, type[nn.Module]] = {"model1": Model1, "model2": Model2, "model3": Model3,
                                     "model4": Model4, "model5": Model5, "model6": Model6}
# model7 and the designs tried for it (docs/results.md, model7's trials).
BEYOND: dict[str, type[nn.Module] | functools.partial] = {
    "model7": TinyNet,  # model7-e's design: the best under 4,000 on its first seeds
    "model7-a": functools.partial(TinyNet, channels=(8, 8, 12, 12), tail=(), dropout_rate=0.05),
    "model7-b": functools.partial(TinyNet, channels=(8, 8, 10, 10), head=16, tail=(),
                                  dropout_rate=0.05),
    "model7-c": functools.partial(TinyNet, dropout_rate=0.05),
    "model7-e": TinyNet,
    # Over 4,000: where the frontier lies if none under it holds.
    "model7-d": functools.partial(TinyNet, channels=(6, 8, 10, 10), tail=(10, 10),
                                  dropout_rate=0.05),
    "model7-f": functools.partial(TinyNet, channels=(6, 8, 10, 10), tail=(10, 10)),
    "model7-g": functools.partial(TinyNet, channels=(6, 8, 10, 10), tail=(10, 10),
                                  dropout_rate=0.1),
    "model7-h": SeparableNet,
    "model7-i": functools.partial(TinyNet, channels=(6, 8, 10, 12), tail=(10, 8),
                                  dropout_rate=0.1),
    "model7-j": functools.partial(TinyNet, channels=(8, 8, 10, 12), tail=(12,),
                                  dropout_rate=0.1),
    "model7-k": functools.partial(TinyNet, channels=(6, 8, 10, 10), tail=(10, 10),
                                  dropout_rate=0.15),
    "model7-l": functools.partial(TinyNet, channels=(6, 8, 8, 8), tail=(12, 12),
                                  dropout_rate=0.1),
    # ReLU's zero gradient below 0 idles part of a block this narrow; SiLU's does not.
    "model7-m": functools.partial(TinyNet, channels=(6, 8, 10, 10), tail=(10, 10),
                                  dropout_rate=0.1, activation=nn.silu),
    # model7-m with shortcuts around its three 10-to-10 blocks, at no cost in parameters.
    "model7-n": functools.partial(TinyNet, channels=(6, 8, 10, 10), tail=(10, 10),
                                  dropout_rate=0.1, activation=nn.silu, residual=True),
    # model7's layout with what model7-g and model7-m added at 4,924: dropout 0.1, SiLU.
    "model7-o": functools.partial(TinyNet, dropout_rate=0.1, activation=nn.silu),
    # Past 5,000: model7-m two maps wider at 14x14, to find where 19 of 20 begins.
    "model7-p": functools.partial(TinyNet, channels=(6, 8, 12, 12), tail=(10, 10),
                                  dropout_rate=0.1, activation=nn.silu),
}
FRONTIER = ("model7-d", "model7-f", "model7-g", "model7-i", "model7-j",
            "model7-k", "model7-l", "model7-m", "model7-n")  # the designs over 4,000 (under 5,000)
PAST_BOUND = ("model7-p",)  # over 5,000: where the frontier lies if none at or under 5,000 holds
MODELS = {**STUDY, **BEYOND}

INPUT_SHAPE = (28, 28, 1)


def get_model(name: str) -> nn.Module:
    """The model registered under ``name``; a ConfigError lists the valid names."""
    try:
        return MODELS[name]()
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None


def init_variables(model: nn.Module, key: jax.Array, batch_size: int = 1) -> dict:
    """Initial ``{"params", "batch_stats"}``, compiled as one program: eager
    init compiles every random op on its own, tens of seconds on a CPU."""
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        raise TypeError(f"init_variables key: a typed JAX key (jax.random.key), got {key.dtype}")
    chex.assert_shape(key, (), custom_message="init_variables key: one JAX key")
    init = jax.jit(functools.partial(model.init, train=False))
    return dict(init(key, jnp.zeros((batch_size, *INPUT_SHAPE), jnp.float32)))


def count_params(variables) -> int:
    """Trainable parameters (BN running statistics are state, not parameters)."""
    return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(variables["params"]))
