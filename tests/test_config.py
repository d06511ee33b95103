"""Settings: defaults, validation, JSON round trip, results summaries."""

from __future__ import annotations

import json
import re

import pytest

from s7jax.runs import results, runfiles
from s7jax.config import DEFAULTS, Config, default_config, validate
from s7jax.errors import ConfigError


@pytest.mark.parametrize("model", list(DEFAULTS))
def test_every_model_has_a_valid_default_recipe_that_round_trips(model):
    config = default_config(model)
    assert config.model == model and config.epochs == 15
    assert Config.from_json(json.loads(config.dumps())) == config


@pytest.mark.parametrize("overrides,message", [
    (dict(epochs=0), "--epochs must be in 1..15"),
    (dict(epochs=16), "--allow-long"),
    (dict(lr=0.0), "--lr must be positive"),
    (dict(batch_size=-1), "--batch-size must be positive"),
    (dict(optimizer="rmsprop"), "--optimizer must be sgd or adam"),
    (dict(schedule="step"), "--schedule must be constant or onecycle"),
    (dict(clean_epochs=20), "--clean-epochs must be in 0..15"),
    (dict(cycle_epochs=16), "--cycle-epochs must be in 1..15"),
    (dict(epochs=5, cycle_epochs=6), "--cycle-epochs must be in 1..5"),
    (dict(pipeline="gpu"), "--pipeline must be one of auto, tfds, device, scan"),
    (dict(data_source="web"), "--data-source must be one of auto, tfds, idx"),
    (dict(distill_weight=1.5), "--distill-weight must be in [0, 1]"),
    (dict(distill_temperature=0.0), "--distill-temperature must be positive"),
])
def test_invalid_settings_raise_one_line(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        default_config("model6", **overrides)
    assert "\n" not in str(err.value)


def test_the_one_cycle_ends_after_cycle_epochs_and_holds_its_final_rate():
    from s7jax.training.steps import learning_rate_schedule
    steps = 10
    full = learning_rate_schedule(default_config("model6", cycle_epochs=None), steps)
    short = learning_rate_schedule(default_config("model6", cycle_epochs=12), steps)
    final = 0.1 * 1e-3  # model6's peak times its final fraction
    assert float(full(12 * steps)) > 10 * final  # the whole-run cycle still decays at 12
    for step in (12 * steps, 13 * steps + 3, 15 * steps - 1):
        assert float(short(step)) == pytest.approx(final, rel=1e-4)
    assert float(short(2 * steps)) > float(full(2 * steps))  # a shorter warm-up, too


def test_a_shorter_run_keeps_the_recipe_cycle_within_it(monkeypatch):
    monkeypatch.setitem(DEFAULTS, "model6", {**DEFAULTS["model6"], "cycle_epochs": 14})
    assert default_config("model6").cycle_epochs == 14
    assert default_config("model6", epochs=4).cycle_epochs == 4  # not a ConfigError
    assert default_config("model6", epochs=4, cycle_epochs=3).cycle_epochs == 3
    assert default_config("model6", epochs=4, clean_epochs=1).cycle_epochs == 4
    assert default_config("model6", epochs=2).clean_epochs == 2  # of the recipe's 3


def test_a_config_recorded_before_cycle_epochs_existed_spans_the_whole_run():
    data = default_config("model6").to_json()
    del data["cycle_epochs"]
    assert Config.from_json(data).cycle_epochs is None


def test_long_runs_need_allow_long():
    assert validate(Config(epochs=20, allow_long=True)).epochs == 20
    with pytest.raises(ConfigError, match="--allow-long"):
        validate(Config(epochs=20))


def test_unknown_keys_in_a_config_file_are_rejected():
    with pytest.raises(ConfigError, match="unknown config keys: colour"):
        Config.from_json({"colour": "blue"})


def test_summary_of_seeds(tmp_path):
    accs = {0: [99.0, 99.45, 99.41, 99.50], 1: [98.9, 99.38, 99.44, 99.47]}
    for seed, values in accs.items():
        run = tmp_path / "model6" / f"seed-{seed}"
        run.mkdir(parents=True)
        runfiles.write_config(run, default_config("model6", seed=seed))
        runfiles.write_metrics(run, [dict(epoch=i + 1, lr=0.1, train_loss=0.1, train_acc=99.0,
                                          test_loss=0.02, test_acc=a, seconds=1.0)
                                     for i, a in enumerate(values)])
    summary = results.all_models(tmp_path)["models"]["model6"]
    assert summary["seeds"]["0"]["last3"] == [99.45, 99.41, 99.50]
    assert summary["seeds"]["1"]["min"] == 99.38
    assert summary["min"] == 99.38 and summary["seeds_holding_target"] == 1
    assert summary["mean"] == pytest.approx(((99.45 + 99.41 + 99.50) / 3 + (99.38 + 99.44 + 99.47) / 3) / 2)


def test_precise_bn_needs_a_model_with_batch_norm():
    with pytest.raises(ConfigError, match="model1 has no BatchNorm"):
        default_config("model1", precise_bn=256)
    assert default_config("model3", precise_bn=256).precise_bn == 256


def test_every_config_field_is_a_flag_with_help_and_the_recipe_in_brackets():
    import argparse
    import dataclasses

    from s7jax.data.augment import AugmentConfig
    from s7jax.cli import add_config_flags
    from s7jax.config import Config

    p = argparse.ArgumentParser()
    add_config_flags(p, ["--model", "model4"])
    flags = {a.dest: a for a in p._actions}
    names = [f.name for f in dataclasses.fields(Config) if f.name != "augment"]
    names += [f.name for f in dataclasses.fields(AugmentConfig)]
    for name in names:
        assert name in flags and flags[name].help, name
        assert name == "model" or "[model4: " in flags[name].help, name
    assert "[model4: 0.05]" in flags["lr"].help and "[model4: onecycle]" in flags["schedule"].help


def test_recipe_original_gives_the_study_recipe_through_the_flags():
    import argparse

    from s7jax.cli import add_config_flags, config_from_args

    p = argparse.ArgumentParser()
    add_config_flags(p)
    config = config_from_args(p.parse_args(["--model", "model5", "--recipe", "original",
                                            "--seed", "2"]))
    assert (config.schedule, config.lr, config.nesterov, config.seed) == ("constant", 0.01, False, 2)
    assert (config.augment.degrees, config.augment.brightness) == (7.0, 0.1)
    flagged = config_from_args(p.parse_args(["--model", "model6", "--recipe", "original",
                                             "--lr", "0.02", "--no-augment"]))
    assert (flagged.lr, flagged.augment.enabled, flagged.precise_bn) == (0.02, False, 0)
