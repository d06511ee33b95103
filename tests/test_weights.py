"""Committed weights (s7jax.runs.weights): each file reproduces its run's recorded
last-epoch test accuracy exactly, and damaged or mismatched files are refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from s7jax import data
from s7jax.runs import runfiles, weights
from s7jax.runs.checksum import arrays_match, arrays_sha256
from s7jax.errors import CheckpointError
from s7jax.models import get_model, init_variables
from s7jax.training.steps import eval_step
from s7jax.training.loops import device_eval_batches, evaluate

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
COMMITTED = sorted(RESULTS.glob("*/seed-*/" + runfiles.WEIGHTS))


def test_every_committed_run_but_model1s_ships_its_weights():
    runs = {p.parent for p in RESULTS.glob("model*/seed-*/metrics.jsonl")
            if p.parent.parent.name != "model1"}
    assert runs and runs == {p.parent for p in COMMITTED if p.parent.parent.name != "model1"}
    assert {p.parent.name for p in COMMITTED if p.parent.parent.name == "model6"} >= {
        f"seed-{s}" for s in range(5)}
    assert all(p.stat().st_size < 200_000 for p in COMMITTED)  # parameters and BN state only


@pytest.fixture(scope="module")
def test_split():
    return data.read_idx()["test"]  # the files themselves: no TFDS needed


@pytest.mark.slow
@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: f"{p.parent.parent.name}-{p.parent.name}")
def test_committed_weights_reproduce_the_recorded_test_accuracy(path, test_split):
    name, variables, info = weights.load(path)
    run = path.parent
    assert name == run.parent.name and info["seed"] == int(run.name.split("-")[1])
    last = runfiles.read_metrics(run)[-1]
    assert info["epoch"] == last["epoch"] and info["test_acc"] == last["test_acc"]
    state = weights.as_state(get_model(name), variables)
    _, acc = evaluate(jax.jit(eval_step), state, device_eval_batches(test_split, 1000))
    assert acc == last["test_acc"]


def test_load_trained_gives_a_module_and_its_variables():
    if not (RESULTS / "model6" / "seed-0" / runfiles.WEIGHTS).is_file():
        pytest.skip("no committed model6 weights")
    model, variables = weights.load_trained("model6", seed=0, results_dir=RESULTS)
    out = model.apply(variables, np.zeros((2, 28, 28, 1), np.float32), train=False)
    assert out.shape == (2, 10)


def test_weights_round_trip_and_refuse_what_does_not_fit(tmp_path):
    variables = init_variables(get_model("model5"), jax.random.key(1, impl="rbg"))
    path = weights.save(tmp_path / "w.msgpack", "model5", variables, epoch=3)
    name, loaded, info = weights.load(path)
    assert (name, info["epoch"]) == ("model5", 3)
    chex.assert_trees_all_equal(loaded, {k: variables[k] for k in ("params", "batch_stats")})

    weights.save(tmp_path / "other.msgpack", "model6",
                 init_variables(get_model("model6"), jax.random.key(1, impl="rbg")))
    tree = (tmp_path / "other.msgpack").read_bytes()
    (tmp_path / "claims-model5.msgpack").write_bytes(tree.replace(b"model6", b"model5"))
    with pytest.raises(CheckpointError, match="do not fit model5"):
        weights.load(tmp_path / "claims-model5.msgpack")
    (tmp_path / "cut.msgpack").write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="not a readable weights file"):
        weights.load(tmp_path / "cut.msgpack")


def test_evaluate_refuses_a_damaged_weights_file_in_one_line(tmp_path):
    bad = tmp_path / "weights.msgpack"
    bad.write_bytes(b"\x00not msgpack at all")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--weights", bad],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {bad} is not a readable weights file (ExtraData)"]


@pytest.mark.slow
def test_torch_port_of_the_committed_model6_agrees(test_split):
    pytest.importorskip("torch")
    from torch_port import from_flax, log_probs

    if not (RESULTS / "model6" / "seed-0" / runfiles.WEIGHTS).is_file():
        pytest.skip("no committed model6 weights")
    model, variables = weights.load_trained("model6", seed=0, results_dir=RESULTS)
    images = data.normalize(test_split.images[:2000])
    ours = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))
    theirs = log_probs(from_flax("model6", variables), images)
    np.testing.assert_allclose(theirs, ours, atol=1e-4)
    assert (theirs.argmax(-1) == ours.argmax(-1)).mean() > 0.999


def flip_bytes(path, count=64):
    """XOR ``count`` bytes in the middle of ``path``: its size and format stay."""
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + count] = bytes(b ^ 0x5A for b in raw[middle:middle + count])
    path.write_bytes(bytes(raw))


def test_flipped_bytes_in_the_arrays_are_refused_not_evaluated(in_process, tmp_path):
    """The checksum saved with the arrays catches damage that keeps the file
    readable; a file written before checksums still loads (its shapes checked)."""
    variables = init_variables(get_model("model6"), jax.random.key(1, impl="rbg"))
    path = weights.save(tmp_path / "w.msgpack", "model6", variables)
    weights.load(path)
    flip_bytes(path)
    with pytest.raises(CheckpointError, match="is damaged: its arrays do not match the checksum"):
        weights.load(path)
    result = in_process("evaluate", "--weights", path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {path} is damaged: its arrays do not match "
                                          "the checksum saved with them"]

    from flax import serialization

    tree = serialization.msgpack_restore(weights.save(tmp_path / "old.msgpack", "model6",
                                                      variables).read_bytes())
    del tree["arrays_sha256"]  # as the files under results/ were written, before checksums
    (tmp_path / "old.msgpack").write_bytes(serialization.msgpack_serialize(tree))
    assert weights.load(tmp_path / "old.msgpack")[0] == "model6"


def test_the_arrays_checksum_keeps_the_format_checkpoints_were_written_in():
    """A changed digest would call every saved checkpoint damaged: the value
    below is what the first checksummed checkpoints recorded for this tree."""
    tree = {"step": np.int32(331), "params": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3) / 7}}
    first = "606e47110df5e6eeb30cdd242d0901a1a4fc084e51abf4a27162b36423a2fc59"
    assert arrays_sha256(tree) == first
    assert arrays_sha256({**tree, "step": np.int64(331)}) == first  # as Orbax may restore it
    assert arrays_match(tree, arrays_sha256(tree, scalars_as_vectors=False))  # a few were written so
    assert not arrays_match({**tree, "step": np.int32(332)}, first)
