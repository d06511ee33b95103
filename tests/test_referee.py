"""The PyTorch referee (s7jax.reference.referee) and the original recipe it shares with
s7jax's ``--recipe original``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s7jax.runs import runfiles
from s7jax.data.augment import NO_AUGMENT, AugmentConfig
from s7jax.config import default_config
from s7jax.errors import ConfigError
from s7jax.reference.referee import RefereeConfig, workdir_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("model, augment", [
    ("model2", NO_AUGMENT), ("model4", NO_AUGMENT),
    ("model5", AugmentConfig(7.0, 0.1, 0.1)), ("model6", AugmentConfig(7.0, 0.2, 0.2)),
])
def test_the_referee_and_s7jax_share_the_original_recipe(model, augment):
    referee = RefereeConfig.original(model, seed=3)
    ours = default_config(model, "original", seed=3)
    assert referee.augment == ours.augment == augment
    assert (referee.lr, referee.momentum, referee.batch_size) == (ours.lr, ours.momentum,
                                                                  ours.batch_size) == (0.01, 0.9, 128)
    assert (ours.schedule, ours.nesterov, ours.clean_epochs, ours.precise_bn) == (
        "constant", False, 0, 0)
    assert workdir_for("results", referee) == Path("results") / model / "torch-seed-3"


def test_the_referee_refuses_what_s7jax_refuses():
    with pytest.raises(ConfigError, match="unknown model"):
        RefereeConfig.original("model9")
    with pytest.raises(ConfigError, match="the referee trains the study's models"):
        RefereeConfig.original("model7")
    with pytest.raises(ConfigError, match="--epochs must be in 1..15"):
        RefereeConfig.original("model2", epochs=20)


def referee(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "referee.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_a_referee_run_has_s7jax_run_files_and_repeats_exactly(tmp_path):
    pytest.importorskip("torch")
    args = ["--model", "model3", "--epochs", "2", "--train-subset", "600", "--test-subset", "300",
            "--no-progress", "--results", tmp_path]
    first = referee(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    run = tmp_path / "model3" / "torch-seed-0"
    rows = runfiles.read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(set(r) == set(runfiles.METRIC_KEYS) for r in rows)
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    config = json.loads(runfiles.config_path(run).read_text())
    assert config["config"]["framework"] == "pytorch"
    assert config["environment"]["framework"] == "pytorch"
    with pytest.raises(ConfigError, match="unknown config keys: framework"):
        runfiles.read_config(run)  # not an s7jax run: reproduce.py and --resume refuse it

    refused = referee(*args)
    assert refused.returncode == 2 and "already holds a run" in refused.stderr
    again = referee(*args, "--overwrite")
    assert again.returncode == 0, again.stderr[-2000:]
    assert runfiles.metric_differences(rows, runfiles.read_metrics(run)) == []
