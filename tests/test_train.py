"""Train and eval steps, the run loop, checkpoints, resume, determinism."""

from __future__ import annotations

import itertools
import os
import re
import signal

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from s7jax.runs import checkpoint, runfiles
from s7jax.training import console, loops
from s7jax.config import default_config
from s7jax.errors import ConfigError, Interrupted, NonFiniteLossError
from s7jax.models import get_model, init_variables
from s7jax.runs import weights
from s7jax.training.steps import (distillation_loss, eval_step, initial_state, learning_rate_schedule,
                                  train_step, train_steps, training_loss)
from s7jax.training.teacher import Teacher
from s7jax.training.loops import epoch_calls
from s7jax.training.train import resolve, train_and_evaluate

# The step-by-step loop on the device, as every recorded run, whatever the
# backend (auto would take scan on a GPU or TPU). Full float32 matmuls: the
# runs below are compared at float32 tolerances, which a GPU's TF32 or a
# TPU's bfloat16 passes would not meet.
QUICK = dict(epochs=2, train_subset=512, test_subset=256, batch_size=64, eval_batch_size=128,
             precise_bn=256, matmul_precision="highest", pipeline="device")


def fixed_batch(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.normal(size=(n, 28, 28, 1)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32),
            "mask": jnp.ones((n,), bool)}


def fresh_state(**overrides):
    config = default_config("model6", **overrides)
    return initial_state(config, learning_rate_schedule(config, 10))


def test_train_steps_lower_the_loss_on_a_fixed_batch():
    state, key = fresh_state(lr=0.05)
    batch = fixed_batch()
    step = jax.jit(train_step)
    losses = []
    for _ in range(5):
        state, metrics = step(state, batch, key)
        losses.append(float(metrics["loss"]) / int(metrics["count"]))
    assert losses[-1] < losses[0]
    assert int(state.step) == 5


def test_one_step_per_call_compiles_to_exactly_train_step():
    """What keeps every committed run repeatable: with one batch, the
    several-steps function is the same program as the single step."""
    state, key = fresh_state()
    batch = fixed_batch(8)
    single = jax.jit(train_step, donate_argnums=0).lower(state, batch, key).as_text()
    grouped = jax.jit(train_steps, donate_argnums=0).lower(state, (batch,), key).as_text()
    assert grouped.replace("@jit_train_steps", "@jit_train_step", 1) == single


@pytest.mark.usefixtures("highest_precision")
def test_several_steps_per_call_equal_single_steps_up_to_rounding():
    state, key = fresh_state(lr=0.05)
    batches = tuple(fixed_batch(seed=s) for s in range(3))
    one = jax.jit(train_step)
    a, sums = state, []
    for batch in batches:
        a, metrics = one(a, batch, key)
        sums.append(metrics)
    b, totals = jax.jit(train_steps)(state, batches, key)
    assert int(b.step) == int(a.step) == 3
    chex.assert_trees_all_close((b.params, b.batch_stats), (a.params, a.batch_stats),
                                rtol=1e-4, atol=1e-6)
    assert int(totals["count"]) == 3 * 64
    assert int(totals["correct"]) == sum(int(m["correct"]) for m in sums)
    np.testing.assert_allclose(totals["loss"], sum(float(m["loss"]) for m in sums), rtol=1e-5)
    assert int(totals["nonfinite_step"]) == -1


def test_epoch_calls_cover_each_step_once_and_fetch_at_every_fifty_and_the_end():
    assert list(epoch_calls(0, 8, 3)) == [(3, False, False), (3, False, False), (2, True, True)]
    calls = list(epoch_calls(45, 110, 4))  # a resumed epoch: steps 45..109
    ends = list(itertools.accumulate((n for n, _, _ in calls), initial=45))[1:]
    assert ends[-1] == 110
    assert [e for e, (_, _, fetch) in zip(ends, calls) if fetch] == [53, 101, 110]
    assert [last for _, last, _ in calls] == [False] * (len(calls) - 1) + [True]
    one_by_one = list(epoch_calls(0, 120, 1))
    assert [i + 1 for i, (_, _, fetch) in enumerate(one_by_one) if fetch] == [50, 100, 120]


def test_label_smoothing_is_cross_entropy_against_smoothed_targets():
    log_probs = jax.nn.log_softmax(jnp.asarray(np.random.default_rng(0).normal(size=(16, 10))))
    labels = jnp.arange(16) % 10
    for e in (0.0, 0.1, 0.3):
        targets = optax.smooth_labels(jax.nn.one_hot(labels, 10), e)
        expected = jnp.mean(optax.softmax_cross_entropy(log_probs, targets))
        np.testing.assert_allclose(training_loss(log_probs, labels, e), expected, rtol=1e-6)


def test_distillation_pulls_the_student_towards_the_softened_teacher():
    """Its gradient in the student's logits is T (softmax(s/T) - softmax(t/T))
    per image: the T^2 cancels the 1/T of both softenings but one."""
    rng = np.random.default_rng(0)
    student, teacher = (jnp.asarray(3 * rng.normal(size=(8, 10)), jnp.float32) for _ in range(2))
    for t in (1.0, 4.0):
        grad = jax.grad(lambda s: distillation_loss(
            jax.nn.log_softmax(s), jax.nn.log_softmax(teacher), t))(student)
        expected = t * (jax.nn.softmax(student / t) - jax.nn.softmax(teacher / t)) / 8
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
        same = jax.nn.log_softmax(teacher)
        assert abs(float(distillation_loss(same, same, t))) < 1e-6


@pytest.fixture
def teacher_run(tmp_path):
    """A run folder with model7-g's initial weights: a teacher (an untrained one)."""
    variables = init_variables(get_model("model7-g"), jax.random.key(1))
    weights.save(runfiles.weights_path(tmp_path), "model7-g", variables, epoch=0, step=0,
                 test_acc=0.0, seed=1)
    return tmp_path


def test_a_teacher_is_static_state_equal_by_its_weights(teacher_run):
    state, _ = fresh_state(teacher=str(teacher_run))
    plain, _ = fresh_state()
    # Not a leaf: checkpoints of a distilled run are those of any other.
    shapes = lambda tree: [(np.shape(x), np.result_type(x)) for x in jax.tree.leaves(tree)]  # noqa: E731
    assert shapes(state) == shapes(plain)
    assert state.teacher == Teacher(teacher_run) and hash(state.teacher) == hash(Teacher(teacher_run))
    other = teacher_run / "other"
    other.mkdir()
    weights.save(runfiles.weights_path(other), "model7-g",
                 init_variables(get_model("model7-g"), jax.random.key(2)), epoch=0)
    assert state.teacher != Teacher(other)
    batch = fixed_batch()
    np.testing.assert_allclose(state.teacher(batch["image"]), get_model("model7-g").apply(
        weights.load(runfiles.weights_path(teacher_run))[1], batch["image"], train=False))


def test_with_all_weight_on_the_teacher_the_labels_do_not_matter(teacher_run):
    batch = fixed_batch()
    relabelled = {**batch, "label": (batch["label"] + 1) % 10}
    step = jax.jit(train_step)
    for weight, labels_matter in ((1.0, False), (0.5, True)):
        state, key = fresh_state(lr=0.05, teacher=str(teacher_run), distill_weight=weight)
        a, _ = step(state, batch, key)
        b, _ = step(state, relabelled, key)
        same = jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a.params, b.params)
        assert all(jax.tree.leaves(same)) is not labels_matter


def test_a_missing_teacher_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no weights file"):
        fresh_state(teacher=str(tmp_path / "absent"))


def test_evaluate_scores_a_distilled_averaged_run_as_it_ran_and_without_its_teacher(
        teacher_run, tfds_dir, tmp_path, in_process):
    # Of a run's two sets of weights it evaluated the moving average; the gallery of
    # misclassified digits must be drawn from the same, and the teacher may be gone.
    run = tmp_path / "run"
    # An average this slow stays near the initial weights: far from the trained ones.
    config = default_config("model6", **QUICK, ema_decay=0.999, teacher=str(teacher_run))
    last = train_and_evaluate(config, run, data_dir=tfds_dir, show_progress=False,
                              log=lambda _: None)[-1]
    runfiles.weights_path(teacher_run).unlink()
    result = in_process("evaluate", "--checkpoint", run, "--data-dir", tfds_dir,
                        "--misclassified", tmp_path / "wrong.png")
    assert result.returncode == 0, result.stderr
    assert f"test loss {last['test_loss']:.4f}, test acc {last['test_acc']:.2f}%" in result.stdout
    wrong = int(re.search(r"of (\d+) misclassified digits", result.stdout)[1])
    assert wrong == round(QUICK["test_subset"] * (1 - last["test_acc"] / 100))


@pytest.mark.usefixtures("highest_precision")
def test_the_weight_average_follows_each_step_and_is_what_gets_evaluated():
    d = 0.9
    state, key = fresh_state(lr=0.05, ema_decay=d)
    plain, _ = fresh_state(lr=0.05)
    assert plain.ema_params is None  # off: the state's leaves (and checkpoints) as before
    batch = fixed_batch()
    seen = [jax.tree.map(np.asarray, state.params)]  # the step donates the arrays
    step = jax.jit(train_step, donate_argnums=0)  # as the loops run it
    for _ in range(2):
        state, _ = step(state, batch, key)
        plain, _ = step(plain, batch, key)
        seen.append(jax.tree.map(np.asarray, state.params))
    chex.assert_trees_all_close(state.params, plain.params, rtol=1e-6)  # training is unchanged
    expected = jax.tree.map(lambda p0, p1, p2: d * d * p0 + d * (1 - d) * p1 + (1 - d) * p2, *seen)
    chex.assert_trees_all_close(state.ema_params, expected, rtol=1e-5, atol=1e-7)
    averaged = fresh_state()[0].replace(params=state.ema_params, batch_stats=state.batch_stats)
    chex.assert_trees_all_close(eval_step(state, batch), eval_step(averaged, batch), rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_kernel_scoped_decay_leaves_batchnorm_and_biases_alone(optimizer):
    zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)
    updates = {}
    for scope in ("all", "kernels"):
        state, _ = fresh_state(optimizer=optimizer, weight_decay=0.1, decay_scope=scope)
        state = state.replace(params=jax.tree.map(jnp.ones_like, state.params))  # no zero leaf
        moved = state.apply_gradients(grads=zeros(state.params))  # only the decay moves anything
        updates[scope] = jax.tree.map(lambda a, b: np.abs(np.asarray(a - b)).max(),
                                      moved.params, state.params)
    flat = jax.tree_util.tree_flatten_with_path(updates["kernels"])[0]
    names = {jax.tree_util.keystr(path): change for path, change in flat}
    kernels = [n for n in names if "kernel" in n]
    assert len(kernels) == 7 and all(names[n] > 0 for n in kernels)
    assert all(change == 0 for n, change in names.items() if n not in kernels)  # bn1..bn5, conv6/7 biases
    # where both decay, they decay alike: the mask picks leaves, it changes no value
    everything = dict((jax.tree_util.keystr(p), c) for p, c in
                      jax.tree_util.tree_flatten_with_path(updates["all"])[0])
    assert all(everything[n] > 0 for n in names)
    np.testing.assert_allclose([names[n] for n in kernels], [everything[n] for n in kernels], rtol=1e-6)


def test_eval_step_scores_each_image_alone_with_the_running_statistics():
    # With the batch's own BN statistics an image's score would depend on its batch:
    # the two halves' sums would not add up to the whole's.
    state, _ = fresh_state()
    state = state.replace(batch_stats=jax.tree.map(lambda x: x + 0.5, state.batch_stats))
    batch = fixed_batch()
    halves = [jax.tree.map(lambda x, h=h: x[h * 32:(h + 1) * 32], batch) for h in (0, 1)]
    whole, parts = eval_step(state, batch), [eval_step(state, h) for h in halves]
    assert int(whole["count"]) == 64
    np.testing.assert_allclose(float(whole["loss"]), sum(float(p["loss"]) for p in parts),
                               rtol=1e-5)
    assert int(whole["correct"]) == sum(int(p["correct"]) for p in parts)


@pytest.mark.usefixtures("highest_precision")
def test_eval_step_ignores_masked_examples():
    state, _ = fresh_state()
    batch = fixed_batch()
    half = dict(batch, mask=jnp.arange(64) < 32)
    first = {k: v[:32] for k, v in batch.items()}
    np.testing.assert_allclose(eval_step(state, half)["loss"], eval_step(state, first)["loss"], rtol=1e-5)
    assert int(eval_step(state, half)["count"]) == 32


def strip_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.fixture(scope="module")
def reference_run(tfds_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ref")
    history = train_and_evaluate(default_config("model6", **QUICK), workdir, data_dir=tfds_dir,
                                 show_progress=False, log=lambda _: None)
    return workdir, history


def test_run_writes_metrics_config_and_checkpoints(reference_run):
    workdir, history = reference_run
    assert [r["epoch"] for r in history] == [1, 2]
    assert runfiles.read_metrics(workdir) == history
    for row in history:
        assert tuple(row) == runfiles.METRIC_KEYS
        assert 0 <= row["test_acc"] <= 100 and row["test_loss"] > 0
    assert runfiles.read_config(workdir) == resolve(default_config("model6", **QUICK))
    assert checkpoint.latest_step(runfiles.checkpoint_dir(workdir)) == 2 * 512 // 64


@pytest.mark.slow  # another full training run: in CI's second command
def test_same_seed_gives_identical_metrics(reference_run, tfds_dir, tmp_path):
    _, history = reference_run
    again = train_and_evaluate(default_config("model6", **QUICK), tmp_path, data_dir=tfds_dir,
                               show_progress=False, log=lambda _: None)
    assert strip_seconds(again) == strip_seconds(history)


def test_checkpoint_round_trip(reference_run):
    workdir, history = reference_run
    config = runfiles.read_config(workdir)
    template, _ = initial_state(config, learning_rate_schedule(config, 8))
    state, record = checkpoint.restore(runfiles.checkpoint_dir(workdir), template)
    assert record["epoch"] == 2 and strip_seconds(record["history"]) == strip_seconds(history)
    assert int(state.step) == 16
    leaves = jax.tree_util.tree_leaves((state.params, state.batch_stats, state.opt_state))
    assert len(leaves) == len(jax.tree_util.tree_leaves(
        (template.params, template.batch_stats, template.opt_state)))
    assert not np.allclose(state.params["conv1"]["kernel"], template.params["conv1"]["kernel"])


def test_interrupt_then_resume_equals_uninterrupted(reference_run, tfds_dir, tmp_path):
    """Ctrl-C (a real SIGINT) mid-epoch saves a checkpoint; resuming finishes
    with exactly the uninterrupted run's metrics."""
    _, history = reference_run
    config = default_config("model6", **QUICK)

    def interrupt_once(line, sent=[]):  # noqa: B006  (state across calls)
        if line == console.table_header() and not sent:  # the loop has begun
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        train_and_evaluate(config, tmp_path, data_dir=tfds_dir, show_progress=False, log=interrupt_once)
    assert checkpoint.latest_step(runfiles.checkpoint_dir(tmp_path)) == 1
    resumed = train_and_evaluate(config, tmp_path, resume=True, data_dir=tfds_dir,
                                 show_progress=False, log=lambda _: None)
    assert strip_seconds(resumed) == strip_seconds(history)
    assert strip_seconds(runfiles.read_metrics(tmp_path)) == strip_seconds(history)


def test_a_signal_between_two_looks_at_the_flag_saves_the_step_it_came(tfds_dir, tmp_path,
                                                                       monkeypatch):
    """The flag goes up just after the loop's first look at it: the run stops
    cleanly at the next step with that step's sums, never with none."""
    from s7jax.runs import recorder

    class RaisedAfterFirstLook(dict):
        looks = 0

        def __getitem__(self, key):
            if key == "set":
                self.looks += 1
                return self.looks > 1
            return super().__getitem__(key)

    monkeypatch.setattr(recorder, "unset_flag",
                        lambda: RaisedAfterFirstLook(set=False, signum=signal.SIGINT))
    with pytest.raises(Interrupted):
        train_and_evaluate(default_config("model6", **QUICK), tmp_path, data_dir=tfds_dir,
                           show_progress=False, log=lambda _: None)
    assert checkpoint.latest_step(runfiles.checkpoint_dir(tmp_path)) == 2


def test_sigterm_then_resume_equals_uninterrupted(reference_run, tfds_dir, tmp_path):
    """SIGTERM (what timeout, a scheduler or a container runtime sends) is
    handled as Ctrl-C is: a checkpoint of the current step, exit code 143,
    and the resumed run equals the uninterrupted one."""
    _, history = reference_run
    config = default_config("model6", **QUICK)
    before = signal.getsignal(signal.SIGTERM)

    def terminate_once(line, sent=[]):  # noqa: B006  (state across calls)
        if line == console.table_header() and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted, match=r"terminated \(SIGTERM\) at step \d+; checkpoint saved") as e:
        train_and_evaluate(config, tmp_path, data_dir=tfds_dir, show_progress=False,
                           log=terminate_once)
    assert e.value.exit_code == 143 and 0 < e.value.step < 16
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back
    resumed = train_and_evaluate(config, tmp_path, resume=True, data_dir=tfds_dir,
                                 show_progress=False, log=lambda _: None)
    assert strip_seconds(resumed) == strip_seconds(history)


def test_ctrl_c_during_the_last_evaluation_finishes_the_run(reference_run, tfds_dir, tmp_path,
                                                              monkeypatch):
    """A run whose last epoch is saved is complete: Ctrl-C then does not
    advise --resume, the run ends as usual."""
    _, history = reference_run
    evaluate, calls = loops.evaluate, []

    def interrupted_evaluation(*args):
        calls.append(True)
        if len(calls) == 2:  # the last epoch's
            os.kill(os.getpid(), signal.SIGINT)
        return evaluate(*args)

    monkeypatch.setattr(loops, "evaluate", interrupted_evaluation)
    done = train_and_evaluate(default_config("model6", **QUICK), tmp_path, data_dir=tfds_dir,
                              show_progress=False, log=lambda _: None)
    assert strip_seconds(done) == strip_seconds(history)


@pytest.mark.tfds  # read back by TensorFlow's own reader
def test_each_epoch_is_written_for_tensorboard(reference_run):
    """The event files hold every epoch's figures, as a TensorBoard reader
    (TensorFlow's own) reads them."""
    workdir, history = reference_run
    from s7jax.data.tf_cpu import tensorflow

    tf = tensorflow()
    (events,) = (workdir / "tensorboard").glob("events.out.tfevents.*")
    seen = {}
    for event in tf.compat.v1.train.summary_iterator(str(events)):
        for value in event.summary.value:
            seen[(value.tag, event.step)] = value.simple_value
    for row in history:
        assert seen[("accuracy/test", row["epoch"])] == pytest.approx(row["test_acc"])
        assert seen[("loss/train", row["epoch"])] == pytest.approx(row["train_loss"])
        assert seen[("learning_rate", row["epoch"])] == pytest.approx(row["lr"])
        assert seen[("time/ms_per_step", row["epoch"])] == pytest.approx(
            1000 * row["seconds"] / 8)


@pytest.mark.slow  # another full training run: in CI's second command
def test_several_steps_per_call_train_the_same_run(reference_run, tfds_dir, tmp_path):
    """3 steps per call over 8-step epochs (3 + 3 + 2): every step taken
    once, the same figures up to float rounding."""
    _, history = reference_run
    config = default_config("model6", **QUICK, steps_per_call=3)
    grouped = train_and_evaluate(config, tmp_path, data_dir=tfds_dir, show_progress=False,
                                 log=lambda _: None)
    assert checkpoint.latest_step(runfiles.checkpoint_dir(tmp_path)) == 16
    for a, b in zip(grouped, history):
        np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-3)
        np.testing.assert_allclose(a["test_loss"], b["test_loss"], rtol=1e-3)
        assert abs(a["test_acc"] - b["test_acc"]) <= 1.0  # at most 2 of 256 test images


def test_nonfinite_loss_stops_with_epoch_and_step(tfds_dir, tmp_path):
    config = default_config("model6", **dict(QUICK, lr=1e30, schedule="constant", precise_bn=0))
    with pytest.raises(NonFiniteLossError) as err:
        train_and_evaluate(config, tmp_path, data_dir=tfds_dir, show_progress=False,
                           log=lambda _: None)
    assert err.value.epoch == 1 and 0 <= err.value.step < 8
    assert checkpoint.latest_step(runfiles.checkpoint_dir(tmp_path)) is None  # nothing bad saved
    assert err.value.kept is None and str(err.value).endswith("no checkpoint was saved before it")


# --------------------------------------------------------------------------
# The path per backend, and an epoch per compiled call
# --------------------------------------------------------------------------


def test_auto_settings_resolve_per_backend(monkeypatch):
    config = default_config("model6")
    assert (config.pipeline, config.data_source) == ("auto", "auto")
    for backend in ("gpu", "tpu"):
        assert resolve(config, backend).pipeline == "scan"
    cpu = resolve(config, "cpu")
    assert (cpu.pipeline, cpu.data_source) == ("device", "idx")  # every committed run's path
    assert resolve(default_config("model6", pipeline="tfds"), "cpu").data_source == "tfds"
    assert resolve(default_config("model6", data_source="tfds"), "cpu").pipeline == "device"
    monkeypatch.setattr("s7jax.data.tfds_available", lambda: False)
    assert resolve(config, "cpu") == cpu  # TensorFlow is not needed by default
    with pytest.raises(ConfigError, match="--pipeline tfds needs tensorflow"):
        resolve(default_config("model6", pipeline="tfds"), "cpu")
    several = default_config("model6", steps_per_call=4)  # valid while its pipeline is auto
    assert resolve(several, "cpu").steps_per_call == 4
    with pytest.raises(ConfigError, match="--steps-per-call applies to"):
        resolve(several, "gpu")  # there auto is scan


@pytest.fixture(scope="module")
def scan_run(tfds_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("scan")
    config = default_config("model6", **dict(QUICK, pipeline="scan"))
    history = train_and_evaluate(config, workdir, data_dir=tfds_dir, show_progress=False,
                                 log=lambda _: None)
    return workdir, history


@pytest.mark.slow  # another full training run: in CI's second command
def test_an_epoch_per_call_trains_what_the_device_pipeline_trains(scan_run, tfds_dir, tmp_path):
    """Same batches (tested in test_data), same steps: the figures agree up to
    the float rounding of a differently fused program."""
    workdir, history = scan_run
    stepwise = train_and_evaluate(default_config("model6", **dict(QUICK, pipeline="device")), tmp_path,
                                  data_dir=tfds_dir, show_progress=False, log=lambda _: None)
    assert runfiles.read_config(workdir).pipeline == "scan"
    assert checkpoint.latest_step(runfiles.checkpoint_dir(workdir)) == 16
    for a, b in zip(history, stepwise, strict=True):
        for key in ("train_loss", "test_loss"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4)
        assert abs(a["train_acc"] - b["train_acc"]) <= 100 / 512  # at most one image
        assert abs(a["test_acc"] - b["test_acc"]) <= 100 / 256


@pytest.mark.slow  # another full training run: in CI's second command
def test_an_epoch_per_call_resumes_after_ctrl_c(scan_run, tfds_dir, tmp_path):
    """Ctrl-C during an epoch call: the epoch finishes, is saved, and a resume
    ends exactly as the uninterrupted run."""
    _, history = scan_run
    config = default_config("model6", **dict(QUICK, pipeline="scan"))

    def interrupt_once(line, sent=[]):  # noqa: B006
        if line == console.table_header() and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        train_and_evaluate(config, tmp_path, data_dir=tfds_dir, show_progress=False, log=interrupt_once)
    assert checkpoint.latest_step(runfiles.checkpoint_dir(tmp_path)) == 8  # the end of epoch 1
    resumed = train_and_evaluate(config, tmp_path, resume=True, data_dir=tfds_dir,
                                 show_progress=False, log=lambda _: None)
    assert strip_seconds(resumed) == strip_seconds(history)


@pytest.mark.parametrize("step", ["train", "eval"])
@pytest.mark.parametrize("damage,named", [
    (lambda b: dict(b, image=b["image"][..., 0]), 'batch["image"]'),       # no channel axis
    (lambda b: dict(b, image=b["image"][:, :14]), 'batch["image"]'),       # a crop
    (lambda b: dict(b, label=b["label"][:-1]), 'batch["label"]'),          # one label short
    (lambda b: dict(b, label=b["label"].astype(jnp.float32)), 'batch["label"]'),
])
def test_a_malformed_batch_is_named_before_xla_sees_it(step, damage, named):
    """chex's checks run while jit traces the step: a wrong batch fails with the
    argument's name and the shapes, not deep inside XLA."""
    state, key = fresh_state()
    batch = damage(fixed_batch(8))
    call = (lambda: jax.jit(train_step)(state, batch, key)) if step == "train" else (
        lambda: jax.jit(eval_step)(state, batch))
    with pytest.raises(AssertionError, match=re.escape(named)) as err:
        call()
    assert "[Chex]" in str(err.value)


@pytest.mark.usefixtures("highest_precision")
def test_precise_bn_weighs_a_short_last_chunk_by_its_size():
    """2,500 images in chunks of 1,000: the first BN layer's statistics (whose
    input no other BN layer shapes) equal those of all 2,500 images at once,
    not an average that overweights the last 500."""
    from s7jax.models import get_model
    from s7jax.training.steps import make_batch_stats_fn, precise_batch_stats

    state, _ = fresh_state()
    images = np.random.default_rng(1).normal(size=(2500, 28, 28, 1)).astype(np.float32)
    images[2000:] += 3.0  # the last chunk differs: an unweighted average would show it
    images = jnp.asarray(images)
    stats_fn = make_batch_stats_fn(get_model("model6"))
    chunked = precise_batch_stats(stats_fn, state, images, chunk=1000)
    whole = precise_batch_stats(stats_fn, state, images, chunk=2500)
    chex.assert_trees_all_close(chunked["bn1"], whole["bn1"], rtol=1e-4, atol=1e-5)


def test_the_run_traces_its_programs_with_its_matmul_precision(tmp_path):
    """--matmul-precision reaches every program the run compiles: they are
    traced inside the setting (the run's log lines are written from there)."""
    seen = set()
    tiny = dict(epochs=1, train_subset=128, test_subset=64, batch_size=64, eval_batch_size=64,
                precise_bn=0, pipeline="device")
    for precision in ("highest", "default"):
        seen.clear()
        train_and_evaluate(default_config("model6", **tiny, matmul_precision=precision),
                           tmp_path / precision, show_progress=False,
                           log=lambda _: seen.add(jax.config.jax_default_matmul_precision))
        assert seen == {None if precision == "default" else precision}
