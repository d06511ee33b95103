"""Seeds in one process (s7jax.training.seeds, sweep.py --together and
--strategy): vmapped or mapped in one program, or one after another."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import chex
import numpy as np
import pytest

from s7jax.runs import checkpoint, runfiles, weights
from s7jax.training import console, loops, seeds
from s7jax.config import default_config
from s7jax.data.augment import NO_AUGMENT
from s7jax.errors import ConfigError, Interrupted
from s7jax.models import get_model
from s7jax.training.train import train_and_evaluate

ROOT = Path(__file__).resolve().parent.parent
# Two epochs of two steps: every per-epoch part (schedule, clean epoch, BN
# re-estimation, evaluation, checkpoint) runs, and the runs are short enough
# that the batched program's float rounding has not grown: over more steps
# any two differently compiled programs drift apart (see test_parallel), here
# a tie in a max-pool that the two programs break differently, then SGD.
# Full float32 matmuls, as the comparisons are at float32 tolerances.
SMALL = dict(epochs=2, train_subset=128, test_subset=256, batch_size=64, eval_batch_size=128,
             precise_bn=128, clean_epochs=1, matmul_precision="highest")
FLAGS = ["--epochs", "2", "--train-subset", "128", "--test-subset", "256", "--batch-size", "64",
         "--eval-batch-size", "128", "--precise-bn", "128", "--clean-epochs", "1",
         "--matmul-precision", "highest"]


def assert_close_to_own_run(rows, own):
    """Float rounding apart: losses within 1e-4, accuracies within one image."""
    for a, b in zip(rows, own, strict=True):
        assert a["lr"] == b["lr"]
        for key in ("train_loss", "test_loss"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, err_msg=key)
        assert abs(a["train_acc"] - b["train_acc"]) <= 100 / 128 + 1e-9  # one image
        assert abs(a["test_acc"] - b["test_acc"]) <= 100 / 256 + 1e-9


@pytest.fixture(scope="module")
def swept(tfds_dir, tmp_path_factory):
    """``scripts/sweep.py --together`` for seeds 0 and 1, as a user runs it."""
    results = tmp_path_factory.mktemp("sweep")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep.py"), "--model", "model6",
                           "--seeds", "2", "--strategy", "vmap", "--checkpoint-every", "2",
                           "--steps-per-call", "4",  # one program per epoch: recorded as 1
                           "--results", str(results), "--data-dir",
                           str(tfds_dir), "--no-progress", *FLAGS],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return results, proc.stdout


@pytest.mark.slow
def test_the_sweep_writes_each_seeds_files_and_the_summary(swept):
    results, out = swept
    assert "2 seeds of model6 in one program (jax.vmap)" in out
    for seed in (0, 1):
        run = results / "model6" / f"seed-{seed}"
        config = runfiles.read_config(run)
        assert (config.seed, config.pipeline, config.steps_per_call) == (seed, "scan", 1)
        assert [r["epoch"] for r in runfiles.read_metrics(run)] == [1, 2]
        # --checkpoint-every 2: the last epoch's checkpoint only, not the first's.
        assert checkpoint.all_steps(runfiles.checkpoint_dir(run)) == [4]
        _, _, info = weights.load(runfiles.weights_path(run))  # each seed's own final weights
        assert (info["seed"], info["step"]) == (seed, 4)
    summary = json.loads((results / "summary.json").read_text())
    assert summary["models"]["model6"]["n_seeds"] == 2
    assert (results / "model6" / "seeds.png").is_file()


@pytest.mark.slow
def test_each_seed_trains_what_its_own_run_trains(swept, tfds_dir, tmp_path):
    """Same initialisation, batches, augmentation and dropout as the seed's
    own ``--pipeline scan`` run (random draws per seed: s7jax.models.seedwise); the
    figures agree to the float rounding of a batched program."""
    results, _ = swept
    together = {s: runfiles.read_metrics(results / "model6" / f"seed-{s}") for s in (0, 1)}
    assert together[0] != together[1]
    for seed in (0, 1):
        alone = train_and_evaluate(default_config("model6", **SMALL, seed=seed, pipeline="scan"),
                                   tmp_path / f"seed-{seed}", data_dir=tfds_dir,
                                   show_progress=False, log=lambda _: None)
        assert_close_to_own_run(together[seed], alone)


@pytest.mark.slow
def test_a_second_sweep_skips_the_finished_seeds(swept, tfds_dir):
    results, _ = swept
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep.py"), "--model", "model6",
                           "--seeds", "2", "--strategy", "vmap", "--checkpoint-every", "2",
                           "--steps-per-call", "4",  # one program per epoch: recorded as 1
                           "--results", str(results), "--data-dir",
                           str(tfds_dir), "--no-progress", *FLAGS],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "seed 0: complete, skipped" in proc.stdout and "seed 1: complete, skipped" in proc.stdout


@pytest.mark.slow  # the first check of a sweep of model1 together: ~8 s
def test_seeds_that_would_not_fit_in_memory_are_refused_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(seeds, "memory_limit", lambda: 2**30)
    config = default_config("model1")
    # at least the state's four copies
    assert seeds.bytes_per_seed(config, get_model("model1")) > 16 * 6_379_786
    with pytest.raises(ConfigError, match=r"8 seeds of model1 together need about [\d.]+ GiB, "
                                          r"more than 50% of the 1.0 GiB") as err:
        seeds.train_seeds(config, list(range(8)), [tmp_path / str(s) for s in range(8)])
    assert "\n" not in str(err.value) and not any(tmp_path.iterdir())


def test_stack_keeps_the_first_trees_static_fields():
    from s7jax.training.steps import initial_state, learning_rate_schedule

    configs = [default_config("model6", seed=s) for s in (0, 1)]
    states = [initial_state(c, learning_rate_schedule(c, 4))[0] for c in configs]
    stacked = loops.stack(states)
    assert stacked.tx is states[0].tx
    chex.assert_tree_shape_prefix(stacked.params, (2,))
    for i in (0, 1):  # each seed's own trees back, not the other's
        chex.assert_trees_all_equal(loops.unstack(stacked, i).params, states[i].params)
    assert not np.array_equal(loops.unstack(stacked, 0).params["conv1"]["kernel"],
                              states[1].params["conv1"]["kernel"])


# A low constant rate: over a few steps, rounding cannot grow into a difference.
# Weight decay on every parameter: with model6's default, on the kernels only,
# the mapped program rounds a last bit differently (the test of that, below).
LOW = dict(SMALL, schedule="constant", lr=0.005, decay_scope="all")
LOW_FLAGS = [*FLAGS, "--schedule", "constant", "--lr", "0.005", "--decay-scope", "all"]


def figures(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def quiet(_):
    pass


def assert_own_run_exactly(run, rows, own):
    """``run`` (a folder, its ``rows``) trained the weights of ``own`` (a
    folder) bit for bit, and recorded its figures but the test loss, which
    may differ in its last bit: on some CPUs XLA orders the sum over the test
    set differently in the mapped program (one of this project's two CPU
    models does). The weights, and so every later figure, are the same."""
    chex.assert_trees_all_equal(weights.load(runfiles.weights_path(run))[1],
                                weights.load(runfiles.weights_path(own))[1])
    theirs = runfiles.read_metrics(own)
    assert len(rows) == len(theirs)
    for a, b in zip(figures(rows), figures(theirs)):
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-6)
        assert {**a, "test_loss": None} == {**b, "test_loss": None}


@pytest.fixture(scope="module")
def own_root(tmp_path_factory):
    return tmp_path_factory.mktemp("own")


@pytest.fixture(scope="module")
def own_runs(tfds_dir, own_root):
    """Seeds 0 and 1, each its own ``--pipeline scan`` run at ``LOW`` (in ``own_root / s``)."""
    return {s: train_and_evaluate(default_config("model6", **LOW, seed=s, pipeline="scan"),
                                  own_root / str(s), data_dir=tfds_dir, show_progress=False, log=quiet)
            for s in (0, 1)}


@pytest.mark.slow
def test_seeds_mapped_in_one_program_train_exactly_their_own_runs(own_runs, own_root, tfds_dir,
                                                                  tmp_path):
    rows = seeds.train_seeds(default_config("model6", **LOW), [0, 1], [tmp_path / "0", tmp_path / "1"],
                             strategy="map", data_dir=tfds_dir, show_progress=False, log=quiet)
    assert rows[0] != rows[1]
    for s in (0, 1):
        assert_own_run_exactly(tmp_path / str(s), rows[s], own_root / str(s))


@pytest.mark.slow
def test_seeds_mapped_with_decay_on_the_kernels_only_train_their_own_runs_up_to_rounding(
        tfds_dir, tmp_path):
    low = dict(LOW, decay_scope="kernels")
    rows = seeds.train_seeds(default_config("model6", **low), [0, 1], [tmp_path / "0", tmp_path / "1"],
                             strategy="map", data_dir=tfds_dir, show_progress=False, log=quiet)
    for s in (0, 1):
        own = train_and_evaluate(default_config("model6", **low, seed=s, pipeline="scan"),
                                 tmp_path / f"own-{s}", data_dir=tfds_dir, show_progress=False,
                                 log=quiet)
        assert_close_to_own_run(rows[s], own)


@pytest.mark.slow
def test_vmapped_seeds_train_their_own_runs_up_to_rounding(own_runs, tfds_dir, tmp_path):
    rows = seeds.train_seeds(default_config("model6", **LOW), [0, 1], [tmp_path / "0", tmp_path / "1"],
                             strategy="vmap", data_dir=tfds_dir, show_progress=False, log=quiet)
    for s in (0, 1):
        assert_close_to_own_run(rows[s], own_runs[s])


@pytest.mark.slow
def test_together_on_a_cpu_trains_each_seed_as_its_own_run(in_process, tfds_dir, tmp_path):
    """On a CPU ``--together`` is ``sequential``: each seed's own run, in turn."""
    proc = in_process("sweep", "--model", "model6", "--seeds", "2", "--together", "--results",
                      tmp_path, "--data-dir", tfds_dir, "--no-progress", *LOW_FLAGS)
    assert proc.returncode == 0, proc.stderr
    assert "in one program" not in proc.stdout
    for s in (0, 1):
        run = tmp_path / "model6" / f"seed-{s}"
        assert runfiles.read_config(run).pipeline == "device"
        own = train_and_evaluate(default_config("model6", **LOW, seed=s), tmp_path / f"own-{s}",
                                 data_dir=tfds_dir, show_progress=False, log=quiet)
        assert figures(runfiles.read_metrics(run)) == figures(own)


@pytest.mark.slow
def test_an_interrupted_mapped_sweep_goes_on_together_as_it_began(own_runs, own_root, in_process,
                                                                 tfds_dir, tmp_path):
    """Ctrl-C in epoch 1 of seeds mapped together; the same sweep again resumes
    both from that epoch's checkpoints in one program, and each ends exactly
    as its own uninterrupted run."""
    def interrupt_once(line, sent=[]):  # noqa: B006
        if line.endswith(console.table_header()) and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    dirs = [tmp_path / "model6" / f"seed-{s}" for s in (0, 1)]
    with pytest.raises(Interrupted):
        seeds.train_seeds(default_config("model6", **LOW), [0, 1], dirs, strategy="map",
                          data_dir=tfds_dir, show_progress=False, log=interrupt_once)
    assert [checkpoint.latest_step(runfiles.checkpoint_dir(d)) for d in dirs] == [2, 2]
    proc = in_process("sweep", "--model", "model6", "--seeds", "2", "--strategy", "map",
                      "--results", tmp_path, "--data-dir", tfds_dir, "--no-progress", *LOW_FLAGS)
    assert proc.returncode == 0, proc.stderr
    assert "seeds 0, 1 together (map, from step 2)" in proc.stdout
    for s, d in zip((0, 1), dirs):
        assert_own_run_exactly(d, runfiles.read_metrics(d), own_root / str(s))


@pytest.mark.slow
def test_a_clean_epoch_trains_what_no_augmentation_trains_on_every_path(tfds_dir, tmp_path):
    """A one-epoch run whose only epoch is clean, and the same run with the
    augmentation off, alone and mapped with another seed: the same images,
    so the same figures up to the rounding of the image normalisation."""
    runs = {}
    for augment in ("clean", "off"):
        config = default_config("model6", **dict(LOW, epochs=1, clean_epochs=1))
        if augment == "off":
            config = dataclasses.replace(config, augment=NO_AUGMENT, clean_epochs=0)
        runs[augment, "alone"] = train_and_evaluate(config, tmp_path / f"{augment}-alone",
                                                    data_dir=tfds_dir, show_progress=False, log=quiet)
        runs[augment, "map"] = seeds.train_seeds(
            config, [0, 1], [tmp_path / f"{augment}-map-{s}" for s in (0, 1)], strategy="map",
            data_dir=tfds_dir, show_progress=False, log=quiet)[0]
    for path in ("alone", "map"):
        (clean,), (off,) = runs["clean", path], runs["off", path]
        for key in ("train_loss", "test_loss"):
            np.testing.assert_allclose(clean[key], off[key], rtol=1e-6, err_msg=f"{path} {key}")
        assert clean["test_acc"] == off["test_acc"]
