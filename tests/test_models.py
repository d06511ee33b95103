"""The six models: exact parameter totals, shapes, and BN/dropout behaviour."""

from __future__ import annotations

import functools
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from s7jax.models.study import FRONTIER, PAST_BOUND
from s7jax.models import BEYOND, MODELS, STUDY, count_params, get_model, init_variables
from s7jax.models.summary import layer_rows, models_table

EXPECTED_PARAMS = {
    "model1": 6_379_786,
    "model2": 21_798,
    "model3": 17_354,
    "model4": 14_450,
    "model5": 12_122,
    "model6": 7_664,
}
BN_MODELS = ["model3", "model4", "model5", "model6"]
DROPOUT_MODELS = ["model4", "model5", "model6"]
# Small models for the property tests; model1's 6.4M parameters only in the counts.
SMALL = ["model2", "model3", "model4", "model5", "model6"]

property_settings = settings(max_examples=6, deadline=None, derandomize=True)


def key(seed):
    return jax.random.key(seed, impl="rbg")


@functools.cache
def variables_for(name: str, seed: int = 0):
    return init_variables(get_model(name), key(seed))


@functools.cache
def apply_fn(name: str, train: bool):
    model = get_model(name)
    if train:
        return jax.jit(lambda v, x, k: model.apply(v, x, train=True, mutable=["batch_stats"],
                                                   rngs={"dropout": k}))
    return jax.jit(lambda v, x: model.apply(v, x, train=False))


def images(batch_size: int, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch_size, 28, 28, 1)), jnp.float32)


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_exact_parameter_totals(name):
    variables = jax.eval_shape(lambda: init_variables(get_model(name), key(0)))
    assert count_params(variables) == EXPECTED_PARAMS[name]


def test_model6_has_under_8000_parameters():  # the study's target, whatever the exact count
    assert count_params(variables_for("model6")) < 8_000


@pytest.mark.parametrize("name", list(BEYOND))
def test_model7_and_its_trial_designs_have_under_4000_parameters_or_their_bound(name):
    # Over 4,000 the frontier's designs; past 5,000 those that look beyond it, still under
    # the study's 8,000.
    low, high = ((4_000, 5_000) if name in FRONTIER else (5_000, 8_000) if name in PAST_BOUND
                 else (0, 4_000))
    variables = jax.eval_shape(lambda: init_variables(get_model(name), key(0)))
    assert low <= count_params(variables) < high
    params = variables["params"]
    layers = [n for n in params if "kernel" in params[n]]
    # BN after every layer but the last (after a depthwise conv's 1x1 conv):
    # the only bias is the last layer's, the one that makes the 10 logit maps.
    biased = [n for n in layers if "bias" in params[n]]
    assert len(biased) == 1 and params[biased[0]]["kernel"].shape[-1] == 10
    assert len(variables["batch_stats"]) == len([n for n in layers
                                                 if not n.startswith("depthwise")]) - 1


@pytest.mark.parametrize("name", list(BEYOND))
def test_a_designs_layout_names_its_layers_widths_in_order(name):
    # The results docs describe each design by its layout: it must be the layers built.
    model = get_model(name)
    widths, dropout, *rest = model.layout.replace("; dropout ", "; ").split("; ")
    params = jax.eval_shape(lambda: init_variables(model, key(0)))["params"]

    def order(name):  # the trees sort by name; a layer's number is its place (the head last)
        number = re.search(r"\d+$", name)
        return int(number.group()) if number else len(params)

    built = [params[n]["kernel"].shape[-1] for n in sorted(params, key=order)
             if "kernel" in params[n] and not n.startswith("depthwise")]
    assert [int(w) for w in re.findall(r"\b\d+\b", re.sub(r"\dx\d", "", widths))] == built
    assert float(dropout) == model.dropout_rate
    assert rest == ([] if getattr(model, "activation", nn.relu) is nn.relu
                    else [model.activation.__name__]) + (["residual"] if getattr(
                        model, "residual", False) else [])


def test_model7_is_model7_e_and_the_designs_trained_with_dropout_keep_it():
    # Their runs under results/ were trained so: a new default must not change them.
    assert get_model("model7") == get_model("model7-e") and get_model("model7").dropout_rate == 0
    assert {n: get_model(n).dropout_rate for n in ("model7-a", "model7-b", "model7-c", "model7-d")
            } == dict.fromkeys(("model7-a", "model7-b", "model7-c", "model7-d"), 0.05)
    assert get_model("model7-f").dropout_rate == 0 and get_model("model7-h").dropout_rate == 0
    tenth = ("model7-g", "model7-i", "model7-j", "model7-l", "model7-m", "model7-n",
             "model7-o", "model7-p")
    assert {n: get_model(n).dropout_rate for n in tenth} == dict.fromkeys(tenth, 0.1)
    assert get_model("model7-k").dropout_rate == 0.15


def test_a_shortcut_carries_its_blocks_input_past_a_silenced_block():
    # With BN's scale and shift at zero in model7-n's three 10-to-10 blocks,
    # each passes on the activation of its input alone (centre-cropped after
    # an unpadded conv); without the shortcuts (model7-m) nothing would pass.
    model = get_model("model7-n")
    variables = variables_for("model7-n")
    silenced = {i: {"scale": jnp.zeros(10), "bias": jnp.zeros(10)} for i in (4, 5, 6)}
    params = {**variables["params"], **{f"bn{i}": v for i, v in silenced.items()}}
    x = images(4)
    log_probs, state = model.apply({**variables, "params": params}, x, train=False,
                                   capture_intermediates=True, mutable=["intermediates"])
    (bn3,) = state["intermediates"]["bn3"]["__call__"]
    h = jax.nn.silu(jax.nn.silu(bn3))  # block 4: silu(0 + its input)
    h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    h = jax.nn.silu(jax.nn.silu(h[:, 1:-1, 1:-1])[:, 1:-1, 1:-1])  # blocks 5 and 6
    head = params["conv7"]
    logits = jnp.einsum("bhwc,hwcd->bd", h, head["kernel"]) + head["bias"]
    np.testing.assert_allclose(log_probs, jax.nn.log_softmax(logits), rtol=1e-5, atol=1e-5)
    assert float(jnp.std(logits, axis=0).max()) > 1e-3  # the images still reach the logits


def test_registry_names_and_unknown_model():
    assert list(STUDY) == [f"model{i}" for i in range(1, 7)]
    assert list(MODELS) == [*STUDY, *BEYOND] and "model7" in BEYOND
    with pytest.raises(ValueError, match="model1, model2"):
        get_model("model9")


def test_count_ignores_batch_stats():
    v = variables_for("model6")
    stats = sum(x.size for x in jax.tree_util.tree_leaves(v["batch_stats"]))
    assert stats == 2 * (8 + 12 + 16 + 10 + 14)  # mean and var of the five BN layers
    assert count_params(v) == count_params({"params": v["params"]})


def test_model6_layers_match_the_spec():
    """Bias-free convs 1-5, biased convs 6-7, BN on 1-5, kernel shapes in order."""
    params = variables_for("model6")["params"]
    channels = [1, 8, 12, 16, 10, 14, 10, 10]
    for i in range(1, 8):
        conv = params[f"conv{i}"]
        assert conv["kernel"].shape == (3, 3, channels[i - 1], channels[i])
        assert ("bias" in conv) == (i >= 6)
        assert (f"bn{i}" in params) == (i <= 5)


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_spatial_sizes_follow_the_spec(name):
    model = get_model(name)
    variables = jax.eval_shape(lambda: init_variables(model, key(0)))
    variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables)
    sizes = []
    for _, _, shape, _, _ in layer_rows(model, variables):
        if not sizes or sizes[-1] != shape[0]:
            sizes.append(shape[0])
    assert sizes == [28, 14, 7, 5, 3, 1]


@pytest.mark.parametrize("name", SMALL)
@property_settings
@given(batch_size=st.sampled_from([1, 3, 8]), seed=st.integers(0, 2**31 - 1))
def test_output_is_log_probabilities(name, batch_size, seed):
    out = apply_fn(name, False)(variables_for(name), images(batch_size, seed))
    assert out.shape == (batch_size, 10)
    np.testing.assert_allclose(np.exp(np.asarray(out)).sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", SMALL)
@property_settings
@given(seed=st.integers(0, 2**31 - 1), batch_size=st.integers(1, 4))
def test_parameter_count_independent_of_seed_and_batch(name, seed, batch_size):
    variables = init_variables(get_model(name), key(seed), batch_size=batch_size)
    assert count_params(variables) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", SMALL)
@property_settings
@given(seed=st.integers(0, 2**31 - 1))
def test_eval_scores_each_image_alone_and_leaves_batch_stats(name, seed):
    model, v, x = get_model(name), variables_for(name), images(4, seed)
    a = apply_fn(name, False)(v, x)
    # Each image's output its own, whatever the batch (running statistics, no dropout).
    np.testing.assert_allclose(apply_fn(name, False)(v, x[:1]), a[:1], rtol=1e-5, atol=1e-6)
    _, updates = model.apply(v, x, train=False, mutable=["batch_stats"])
    chex.assert_trees_all_equal(dict(updates).get("batch_stats", {}), v.get("batch_stats", {}))


@pytest.mark.parametrize("name", BN_MODELS)
@property_settings
@given(seed=st.integers(0, 2**31 - 1))
def test_train_mode_updates_batch_stats(name, seed):
    v = variables_for(name)
    _, updates = apply_fn(name, True)(v, images(8, seed), key(seed))
    before = jax.tree_util.tree_leaves(v["batch_stats"])
    after = jax.tree_util.tree_leaves(updates["batch_stats"])
    assert len(before) == len(after) > 0
    assert all(not np.allclose(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("name", DROPOUT_MODELS)
@property_settings
@given(seed=st.integers(0, 2**30))
def test_dropout_follows_its_key(name, seed):
    v, x, train = variables_for(name), images(4, seed), apply_fn(name, True)
    same_a, _ = train(v, x, key(seed))
    same_b, _ = train(v, x, key(seed))
    other, _ = train(v, x, key(seed + 1))
    np.testing.assert_array_equal(same_a, same_b)
    assert not np.allclose(same_a, other)


def test_model2_has_no_train_mode_difference():
    """No BN, no dropout: train and eval compute the same function."""
    v, x = variables_for("model2"), images(2)
    trained, _ = apply_fn("model2", True)(v, x, key(0))
    np.testing.assert_allclose(trained, apply_fn("model2", False)(v, x), rtol=1e-6)


class ModelVariantsTest(chex.TestCase):
    """Each model eagerly and under jit (chex.variants): log-probabilities of
    the right shape, the same figures both ways, and a key that is not a typed
    JAX key refused by name."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_eval_output_eagerly_and_compiled(self):
        for name in ("model2", "model6"):
            v, x = variables_for(name), images(3, 1)
            apply = self.variant(lambda v, x, m=get_model(name): m.apply(v, x, train=False))
            out = apply(v, x)
            chex.assert_shape(out, (3, 10))
            chex.assert_trees_all_close(jnp.exp(out).sum(axis=1), jnp.ones(3), rtol=1e-5)
            chex.assert_trees_all_close(out, apply_fn(name, False)(v, x), rtol=1e-5, atol=1e-6)

    def test_init_needs_a_typed_key(self):
        with self.assertRaisesRegex(TypeError, "init_variables key: a typed JAX key"):
            init_variables(get_model("model6"), jax.random.PRNGKey(0))


def test_the_models_table_marks_what_is_beyond_the_study():
    def rows(table):
        return {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}

    assert list(rows(models_table())) == [*STUDY, "model7"]  # the trial designs on request
    rows = rows(models_table(designs=True))
    assert list(rows) == list(MODELS)
    assert "| 7,664 " in rows["model6"] and rows["model6"].rstrip(" |").endswith("the study")
    assert all(rows[name].rstrip(" |").endswith("beyond the study") for name in BEYOND)
