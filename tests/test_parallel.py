"""Data parallelism: four devices train the same model as one.

JAX sees one CPU device in the test process, so the comparisons run in a
child process (this file run as a script) that splits the host into four
devices (``chex.set_n_cpu_devices``) before JAX starts. The child trains,
inspects and compares in one go and writes what it measured to a JSON file;
the tests below check that record.

What the child measures, with the 4-device mesh against a 1-device mesh:

* single steps: from the *same* state and batch, the library's ``train_step``
  and ``eval_step`` compiled for each mesh, as ``train_and_evaluate`` compiles
  them (teacher-forced for three steps, so each comparison starts equal);
* whole runs: ``train_and_evaluate`` for two epochs, each mesh from scratch,
  with one call per step, with one call per epoch (``--pipeline scan``), and
  two seeds as one vectorised program (``s7jax.training.seeds``);
* the shardings inside the 4-device run: a training batch, an evaluation
  batch, and the train state saved after each epoch;
* the random streams: dropout masks and ``rbg`` bits under both meshes, and
  the batches of the on-device pipeline;
* a global batch that the device count does not divide.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a child process trains a dozen short runs on 4 devices

DEVICES = 4
# Two epochs of model6 on a subset. test_subset 200 with eval batches of 128
# leaves 56 padded rows in the last batch, so the masked (padding) rows are
# spread over devices as well. lr 0.01 (the original recipe's rate) rather than
# the recipe's 0.1: see test_two_epoch_runs_match_one_device for why.
RUN = dict(epochs=2, train_subset=512, test_subset=200, batch_size=64, eval_batch_size=128,
           precise_bn=128, clean_epochs=1, lr=0.01, matmul_precision="highest")


# --------------------------------------------------------------------------
# The child process
# --------------------------------------------------------------------------


def _rel(a, b) -> float:
    """max |a - b| relative to max |b|: a leaf's error on the scale of the leaf."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _max_rel(tree_a, tree_b) -> float:
    import jax

    return max(_rel(a, b) for a, b in zip(jax.tree_util.tree_leaves(tree_a),
                                          jax.tree_util.tree_leaves(tree_b), strict=True))


def _params_err(new_a, new_b, old) -> float:
    """The largest difference of two updated parameter trees, in units of
    (1e-3 of the leaf's largest update + 4 float32 ulps of the value): a
    parameter is stored in float32, so two nearly equal updates of it can
    still round 1 ulp apart, which is large next to a small update."""
    import jax
    import numpy as np

    worst = 0.0
    for a, b, o in zip(*(jax.tree_util.tree_leaves(t) for t in (new_a, new_b, old)), strict=True):
        a, b, o = (np.asarray(x, np.float64) for x in (a, b, o))
        tol = 1e-3 * np.abs(b - o).max() + 4 * np.finfo(np.float32).eps * np.abs(b)
        worst = max(worst, float((np.abs(a - b) / np.maximum(tol, 1e-30)).max()))
    return worst


def _describe_sharded(array) -> dict:
    """How a (batch) array lies on the devices."""
    from jax.sharding import NamedSharding

    s = array.sharding
    named = isinstance(s, NamedSharding)
    shards = sorted(array.addressable_shards, key=lambda sh: sh.index[0].start or 0)
    return {
        "type": type(s).__name__,
        "is_named": named,
        "spec": [None if p is None else str(p) for p in s.spec] if named else None,
        "mesh_axes": list(s.mesh.axis_names) if named else None,
        "mesh_size": int(s.mesh.devices.size) if named else None,
        "global_shape": list(array.shape),
        "devices": sorted(d.id for d in s.device_set),
        "shard_devices": [sh.device.id for sh in shards],
        "shard_shapes": [list(sh.data.shape) for sh in shards],
        "shard_rows": [[sh.index[0].start, sh.index[0].stop] for sh in shards],
    }


def _describe_replicated(tree) -> dict:
    """Whether every leaf of ``tree`` is a full, identical copy on every device."""
    import jax
    import numpy as np

    leaves = jax.tree_util.tree_leaves(tree)
    report = {"leaves": len(leaves), "not_replicated": [], "device_counts": set(),
              "unequal_copies": 0}
    for i, leaf in enumerate(leaves):
        report["device_counts"].add(len(leaf.sharding.device_set))
        if not leaf.sharding.is_fully_replicated:
            report["not_replicated"].append(i)
        copies = [np.asarray(sh.data) for sh in leaf.addressable_shards]
        if any(c.shape != leaf.shape or not np.array_equal(c, copies[0]) for c in copies):
            report["unequal_copies"] += 1
    report["device_counts"] = sorted(report["device_counts"])
    return report


def _child(data_dir: str, out_path: str, work: str) -> None:
    import functools

    import chex
    import jax

    chex.set_n_cpu_devices(DEVICES)  # before anything asks JAX for its devices
    jax.config.update("jax_disable_most_optimizations", True)  # as conftest: fast compiles
    jax.config.update("jax_default_matmul_precision", "highest")  # compared at float32 tolerances
    import jax.numpy as jnp
    import numpy as np

    from s7jax import data
    from s7jax.models import ops
    from s7jax.runs import checkpoint
    from s7jax.training import loops, parallel, seeds, train
    from s7jax.training.steps import PRNG_IMPL, eval_step, initial_state, learning_rate_schedule, train_step
    from s7jax.config import default_config
    from s7jax.errors import ConfigError

    out: dict = {"device_count": jax.device_count()}
    assert jax.device_count() == DEVICES, jax.devices()
    work = Path(work)
    # Both runs read the same splits: read them once.
    data.load_mnist = functools.cache(data.load_mnist)

    meshes = {n: parallel.make_mesh(jax.devices()[:n]) for n in (DEVICES, 1)}
    rep = {n: parallel.replicated(m) for n, m in meshes.items()}
    shd = {n: parallel.batch_sharded(m) for n, m in meshes.items()}
    config = default_config("model6", **RUN)

    # -- A global batch that the devices do not divide ----------------------
    errors = {}
    for name, overrides in (("batch", dict(batch_size=30)), ("eval", dict(eval_batch_size=90))):
        workdir = work / f"indivisible-{name}"
        workdir.mkdir()
        try:
            train.train_and_evaluate(default_config("model6", **{**RUN, **overrides}), workdir,
                                     mesh=meshes[DEVICES], data_dir=data_dir,
                                     show_progress=False, log=lambda _: None)
            errors[name] = {"raised": None}
        except ConfigError as e:
            errors[name] = {"raised": "ConfigError", "message": str(e),
                            "files_written": sorted(p.name for p in workdir.iterdir())}
    out["indivisible"] = errors

    # -- Random streams under both meshes -------------------------------------
    key = jax.random.key(config.seed, impl=PRNG_IMPL)
    streams = {}
    for n in (DEVICES, 1):
        x = jax.device_put(np.zeros((64, 28, 28, 8), np.float32), shd[n])
        mask = jax.jit(lambda k, x: ops.keep_mask(k, x.shape, 0.9), out_shardings=shd[n])(key, x)
        bits = jax.jit(lambda k: jax.random.bits(jax.random.fold_in(k, 5), (64, 3), jnp.uint32),
                       out_shardings=shd[n])(key)
        streams[n] = (np.asarray(mask), np.asarray(bits))
    out["dropout_masks_equal"] = bool(np.array_equal(streams[DEVICES][0], streams[1][0]))
    out["rbg_bits_equal"] = bool(np.array_equal(streams[DEVICES][1], streams[1][1]))

    splits = data.load_mnist(data_dir)
    train_split = splits["train"].subset(config.train_subset)
    test_split = splits["test"].subset(config.test_subset)
    device_batches = {}
    for n in (DEVICES, 1):
        pipeline = data.DeviceTrainData.create(
            train_split, batch_size=config.batch_size, seed=config.seed, augment=config.augment,
            epochs=config.epochs, clean_epochs=config.clean_epochs,
            replicated=rep[n]).batches(0, shd[n])
        device_batches[n] = [jax.device_get(next(pipeline)) for _ in range(3)]
    out["device_pipeline_batches_equal"] = all(
        np.array_equal(a[k], b[k]) for a, b in zip(device_batches[DEVICES], device_batches[1])
        for k in ("image", "label"))

    # -- Single steps, teacher-forced ------------------------------------------
    steps = data.steps_per_epoch(len(train_split), config.batch_size)
    state, dropout_key = initial_state(config, learning_rate_schedule(config, steps))
    state = jax.device_get(state)  # on the host: each device_put makes a fresh, donatable copy
    batches = device_batches[1]  # on the host; no TensorFlow needed
    # Compiled as train_and_evaluate compiles it (donation included, which lets
    # the whole runs below reuse these executables).
    step_fns = {n: jax.jit(train_step, donate_argnums=0, out_shardings=(rep[n], rep[n]))
                for n in rep}
    step_records = []
    for batch in batches:
        result = {n: jax.device_get(step_fns[n](jax.device_put(state, rep[n]),
                                                jax.device_put(batch, shd[n]), dropout_key))
                  for n in rep}
        (new4, m4), (new1, m1) = result[DEVICES], result[1]
        step_records.append({
            "loss_rel": _rel(m4["loss"], m1["loss"]),
            "correct": [int(m4["correct"]), int(m1["correct"])],
            "count": [int(m4["count"]), int(m1["count"])],
            "step": [int(new4.step), int(new1.step)],
            # SGD's momentum trace: g + 0.9 * (the same previous trace), so it
            # compares the gradients themselves.
            "grad_rel": _max_rel(new4.opt_state, new1.opt_state),
            "batch_stats_rel": _max_rel(new4.batch_stats, new1.batch_stats),
            "params_err": _params_err(new4.params, new1.params, state.params),
        })
        state = new1  # both meshes start the next step from the same state
    out["train_steps"] = step_records
    eval_fns = {n: jax.jit(eval_step, out_shardings=rep[n]) for n in rep}
    evals = {n: [jax.device_get(eval_fns[n](jax.device_put(state, rep[n]), b))
                 for b in loops.device_eval_batches(test_split, config.eval_batch_size, shd[n])]
             for n in rep}
    out["eval_steps"] = [{"loss_rel": _rel(a["loss"], b["loss"]),
                          "correct": [int(a["correct"]), int(b["correct"])],
                          "count": [int(a["count"]), int(b["count"])]}
                         for a, b in zip(evals[DEVICES], evals[1], strict=True)]

    # -- Whole runs, with spies on the 4-device one ----------------------------
    seen = {"train_batch": None, "eval_batch": None, "saved_states": []}
    real_put, real_save, real_batches = jax.device_put, checkpoint.save, loops.training_batches

    def spy_put(x, *args, **kwargs):
        result = real_put(x, *args, **kwargs)
        if isinstance(x, dict) and "mask" in x and seen["eval_batch"] is None:
            seen["eval_batch"] = {k: _describe_sharded(v) for k, v in result.items()}
        return result

    def spy_batches(*args, **kwargs):  # the training batches as the loop gets them
        for batch in real_batches(*args, **kwargs):
            if seen["train_batch"] is None:
                seen["train_batch"] = {k: _describe_sharded(v) for k, v in batch.items()}
            yield batch

    def spy_save(directory, step, state, record):
        seen["saved_states"].append({
            "step": step,
            "params": _describe_replicated(state.params),
            "batch_stats": _describe_replicated(state.batch_stats),
            "opt_state": _describe_replicated(state.opt_state),
            "step_counter": _describe_replicated(state.step),
        })
        return real_save(directory, step, state, record)

    histories = {}
    for n in (DEVICES, 1):
        workdir = work / f"run{n}"
        workdir.mkdir()
        if n == DEVICES:
            jax.device_put, checkpoint.save = spy_put, spy_save
            loops.training_batches = spy_batches
        try:
            histories[n] = train.train_and_evaluate(config, workdir, mesh=meshes[n],
                                                    data_dir=data_dir, show_progress=False,
                                                    log=lambda _: None)
        finally:
            jax.device_put, checkpoint.save = real_put, real_save
            loops.training_batches = real_batches
    out["histories"] = {str(n): h for n, h in histories.items()}
    # The same runs with an epoch per compiled call (the accelerators' default).
    scan_config = default_config("model6", **RUN, pipeline="scan")
    out["scan_histories"] = {}
    for n in (DEVICES, 1):
        workdir = work / f"scan{n}"
        workdir.mkdir()
        out["scan_histories"][str(n)] = train.train_and_evaluate(
            scan_config, workdir, mesh=meshes[n], data_dir=data_dir, show_progress=False,
            log=lambda _: None)
    # Two seeds as one vectorised program: each seed's batch split over the
    # devices, the seed axis whole on each.
    out["seed_histories"] = {}
    for n in (DEVICES, 1):
        together = seeds.train_seeds(default_config("model6", **RUN), [0, 1],
                                     [work / f"seeds{n}" / f"seed-{s}" for s in (0, 1)],
                                     mesh=meshes[n], data_dir=data_dir, show_progress=False,
                                     log=lambda _: None)
        out["seed_histories"][str(n)] = together[0] + together[1]
    out["seen"] = seen
    Path(out_path).write_text(json.dumps(out, indent=1))


# --------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def record(tfds_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parallel")
    out = tmp / "record.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, __file__, str(tfds_dir), str(out), str(tmp)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"child failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    result = json.loads(out.read_text())
    assert result["device_count"] == DEVICES
    return result


def test_indivisible_global_batch_is_a_config_error(record):
    for name, what, size in (("batch", "the batch size", 30), ("eval", "the eval batch size", 90)):
        error = record["indivisible"][name]
        assert error["raised"] == "ConfigError", error
        message = error["message"]  # e.g. "the batch size (30) must divide by ... devices (4)"
        assert message.startswith(what) and f"({size})" in message, message
        assert f"number of devices ({DEVICES})" in message, message
        assert error["files_written"] == []  # refused before anything was written


def test_training_batch_is_split_over_the_devices(record):
    batch = record["seen"]["train_batch"]
    rows = RUN["batch_size"] // DEVICES
    for name, item_shape in (("image", [28, 28, 1]), ("label", [])):
        s = batch[name]
        assert s["is_named"] and s["spec"] == ["data"] and s["mesh_axes"] == ["data"], s
        assert s["mesh_size"] == DEVICES and len(s["devices"]) == DEVICES
        assert s["global_shape"] == [RUN["batch_size"], *item_shape]
        # One quarter of the rows on each device, each device a different quarter.
        assert s["shard_shapes"] == [[rows, *item_shape]] * DEVICES
        assert s["shard_rows"] == [[i * rows, (i + 1) * rows] for i in range(DEVICES)]
        assert sorted(s["shard_devices"]) == s["devices"]


def test_evaluation_batch_is_split_over_the_devices(record):
    batch = record["seen"]["eval_batch"]
    rows = RUN["eval_batch_size"] // DEVICES
    for name in ("image", "label", "mask"):
        s = batch[name]
        assert s["is_named"] and s["spec"] == ["data"] and s["mesh_size"] == DEVICES, s
        assert [shape[0] for shape in s["shard_shapes"]] == [rows] * DEVICES
        assert sorted(s["shard_devices"]) == s["devices"] and len(s["devices"]) == DEVICES


def test_train_state_is_replicated_on_every_device(record):
    saved = record["seen"]["saved_states"]
    assert [s["step"] for s in saved] == [8, 16]  # after each epoch (512 // 64 steps)
    for s in saved:
        for part in ("params", "batch_stats", "opt_state", "step_counter"):
            report = s[part]
            assert report["leaves"] > 0
            assert report["not_replicated"] == [], (s["step"], part, report)
            assert report["device_counts"] == [DEVICES], (s["step"], part, report)
            # The copies are bit for bit the same: one model, not four drifting apart.
            assert report["unequal_copies"] == 0, (s["step"], part, report)


def test_random_streams_do_not_depend_on_the_sharding(record):
    # Dropout masks hash the global element index (s7jax.models.ops.keep_mask); the
    # "rbg" bits, drawn straight into a batch-sharded array, and the on-device
    # pipeline's shuffles and augmentations come out bit for bit the same.
    assert record["dropout_masks_equal"]
    assert record["rbg_bits_equal"]
    assert record["device_pipeline_batches_equal"]


def test_single_steps_match_one_device(record):
    """Tolerance: float32 rounding. The maths is the same, but the 4-device
    program sums over the batch (BN statistics, the loss, each weight
    gradient's sum over up to 64 x 28 x 28 positions) as four partial sums and
    an all-reduce, in another order than one device does.

    Measured on the first training batch against a float64 evaluation of the
    same step: every gradient leaf of either program is within 2e-6 of float64
    (relative to the leaf's largest entry) except conv1's kernel, 72 sums of
    ~50,000 terms that the BatchNorm after it makes cancel to ~1/1000 of their
    size: there one device is 2.6e-4 off float64 and four devices 5e-5. In
    float64 the two programs agree to 4e-13. So the gradients are held to
    1e-3 (measured at most 2.7e-4 apart) and the BN statistics and the loss
    to 1e-5 (measured 1.6e-7). A real mismatch (per-device BN statistics, a
    lost or duplicated shard, other dropout masks) changes what is computed,
    not how it is rounded, and lands far outside these bounds.
    """
    for i, step in enumerate(record["train_steps"]):
        assert step["step"] == [i + 1, i + 1]
        assert step["count"] == [RUN["batch_size"]] * 2
        assert step["loss_rel"] < 1e-5, step
        # The gradients: SGD's momentum trace is g + 0.9 x (the same trace).
        assert step["grad_rel"] < 1e-3, step
        assert step["batch_stats_rel"] < 1e-5, step
        assert step["params_err"] <= 1, step  # see _params_err
        # A prediction flips only on a near-tie at the 1e-6 level.
        assert abs(step["correct"][0] - step["correct"][1]) <= 1, step
    evals = record["eval_steps"]
    assert [e["count"][0] for e in evals] == [128, RUN["test_subset"] - 128]  # padding masked
    for e in evals:
        assert e["count"][0] == e["count"][1]
        assert e["loss_rel"] < 1e-5, e
        assert abs(e["correct"][0] - e["correct"][1]) <= 1, e


@pytest.mark.parametrize("runs", ["histories", "scan_histories", "seed_histories"])
def test_two_epoch_runs_match_one_device(record, runs):
    """Tolerance: the single steps agree to float32 rounding (above), but
    training amplifies rounding: a ~1e-6 difference flips a ReLU or a max-pool
    choice somewhere, which changes that unit's gradient outright, and in 16
    SGD steps the two runs drift apart. The drift is not a parallelism effect:
    a 1-device run whose initial weights are scaled by (1 + 1e-7) drifts the
    same way, only later. Measured on this subset at lr 0.01 over seeds 0-2:
    losses within 2.2e-4 (relative) and accuracies within 1 point (2 of 200
    test images, 4 of 512 training images); at the recipe's lr 0.1 the losses
    drift ~1.5% in two epochs, hence the lower rate here. The bounds below are
    ~10x and 2x those figures, loose enough for another CPU's rounding; the
    sharp check is test_single_steps_match_one_device, this one checks the
    whole loop (data, epochs, precise BN, evaluation) on the mesh, both loops."""
    four, one = record[runs][str(DEVICES)], record[runs]["1"]
    epochs = [1, 2] * (2 if runs == "seed_histories" else 1)  # two seeds, one after the other
    assert [r["epoch"] for r in four] == [r["epoch"] for r in one] == epochs
    for a, b in zip(four, one):
        assert a["lr"] == b["lr"]
        for key in ("train_loss", "test_loss"):
            assert a[key] == pytest.approx(b[key], rel=2e-3), (key, a, b)
        for key in ("train_acc", "test_acc"):
            assert abs(a[key] - b[key]) <= 2.0, (key, a, b)


if __name__ == "__main__":
    _child(*sys.argv[1:4])
