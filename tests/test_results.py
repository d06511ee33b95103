"""Summaries over seeds: the mean, its interval, who holds and who is worst."""

from __future__ import annotations

import json

import pytest

from s7jax.runs import results
from tools.report import trials


def seed(*last3):
    return {"last3": list(last3), "min": min(last3), "mean": sum(last3) / len(last3), "best": max(last3)}


def test_over_seeds_counts_holders_and_gives_the_mean_a_students_t_interval():
    runs = {"0": seed(99.40, 99.40, 99.40), "1": seed(99.50, 99.55, 99.45),
            "2": seed(99.70, 99.39, 99.71)}
    m = results.over_seeds(runs)
    assert m["n_seeds"] == 3 and m["seeds_holding_target"] == 2  # seed 2 dips to 99.39
    assert m["mean"] == pytest.approx(99.5)
    assert m["std"] == pytest.approx(0.1)
    assert m["ci95"] == pytest.approx(4.303 * 0.1 / 3 ** 0.5)  # t(0.975, 2 degrees of freedom)
    assert m["worst_seed"] == "2" and m["min"] == 99.39
    assert results.over_seeds({"0": seed(99.5, 99.5, 99.5)})["ci95"] is None


def record_run(run, config, last3):
    from s7jax.runs import runfiles

    run.mkdir(parents=True)
    runfiles.write_config(run, config)
    runfiles.write_metrics(run, [dict(epoch=i + 1, lr=0.1, train_loss=0.1, train_acc=99.0,
                                      test_loss=0.02, test_acc=a, seconds=1.0)
                                 for i, a in enumerate([98.0, *last3])])


def test_recipe_trials_name_their_changes_and_compare_on_the_same_seeds(tmp_path):
    from s7jax.data.augment import AugmentConfig
    from s7jax.config import default_config

    root = tmp_path / trials.TRIALS
    (tmp_path / "before-the-pool-fix.txt").write_text("recipe-trials/*\n")  # this table's trials
    for s, last3 in {0: (99.40, 99.42, 99.44), 1: (99.50, 99.50, 99.50),
                     2: (99.30, 99.30, 99.30)}.items():
        record_run(root / trials.BASELINE / "model6" / f"seed-{s}",
                   default_config(seed=s, weight_decay=0.0), last3)
    recorded = root / trials.BASELINE / "model6" / "seed-0" / "config.json"
    record = json.loads(recorded.read_text())
    del record["config"]["ema_decay"]  # a run recorded before the setting existed
    recorded.write_text(json.dumps(record))
    for s, last3 in {0: (99.50, 99.52, 99.54), 1: (99.50, 99.56, 99.53)}.items():
        record_run(root / "decay" / "model6" / f"seed-{s}",
                   default_config(seed=s, weight_decay=1e-3,
                                  augment=AugmentConfig(5.0, 0.2, 0.2)), last3)
    record_run(root / "decay-smooth" / "model6" / "seed-1",
               default_config(seed=1, weight_decay=1e-3, augment=AugmentConfig(5.0, 0.2, 0.2),
                              label_smoothing=0.1), (99.40, 99.40, 99.40))
    (root / "empty").mkdir()  # a trial with no runs yet is left out
    base, decay, smooth = trials.recipe_trials(tmp_path)
    assert base["name"] == trials.BASELINE and base["runs"]["n_seeds"] == 3
    assert decay["changes"] == {"weight_decay": (0.0, 1e-3), "augment.degrees": (7.0, 5.0)}
    assert decay["builds_on"] == trials.BASELINE
    assert decay["paired_seeds"] == 2  # seed 2 has no trial run
    assert decay["paired_difference"] == pytest.approx((0.10 + 0.03) / 2)
    assert decay["paired_se"] == pytest.approx(0.07 / 2 ** 0.5 / 2 ** 0.5)  # std 0.07/sqrt(2)
    assert smooth["builds_on"] == "decay" and smooth["paired_seeds"] == 1
    assert smooth["paired_difference"] == pytest.approx(99.40 - 99.53)
    assert smooth["paired_se"] is None  # one seed has no spread
    assert trials.recipe_trials(tmp_path / "nowhere") == []


def test_trials_after_the_fix_are_set_against_todays_runs_not_the_earlier_trials(tmp_path):
    from s7jax.config import default_config

    (tmp_path / "before-the-pool-fix.txt").write_text("recipe-trials/old\n")
    for s, last3 in {0: (99.40, 99.40, 99.40), 1: (99.50, 99.50, 99.50)}.items():
        today = default_config(seed=s, pipeline="device", decay_scope="all")
        record_run(tmp_path / "model6" / f"seed-{s}", today, last3)
        record_run(tmp_path / trials.TRIALS / "old" / "model6" / f"seed-{s}",
                   default_config(seed=s, decay_scope="kernels"), (99.9, 99.9, 99.9))
    for s, last3 in {1: (99.56, 99.56, 99.56), 2: (99.60, 99.60, 99.60)}.items():
        record_run(tmp_path / trials.TRIALS / "kernels" / "model6" / f"seed-{s}",
                   default_config(seed=s, decay_scope="kernels", pipeline="scan"), last3)
    default, kernels = trials.after_fix(tmp_path)
    assert default["name"] == "default" and default["runs"]["n_seeds"] == 2
    # the pipeline computes the same recipe: not a change
    assert kernels["changes"] == {"decay_scope": ("all", "kernels")}
    assert kernels["builds_on"] == "default" and kernels["paired_seeds"] == 1  # seed 1 only
    assert kernels["paired_difference"] == pytest.approx(0.06)
    assert [t["name"] for t in trials.recipe_trials(tmp_path)] == []  # no baseline among old ones
    assert trials.after_fix(tmp_path / "nowhere") == []



def test_the_gpu_screen_sets_each_trial_against_its_own_baseline_whatever_its_model(tmp_path):
    from s7jax.config import default_config

    root = tmp_path / trials.GPU_TRIALS
    for s, last3 in {0: (99.40, 99.40, 99.40), 1: (99.50, 99.50, 99.50)}.items():
        record_run(root / trials.GPU_BASELINE / "model7-g" / f"seed-{s}",
                   default_config("model7-g", seed=s, pipeline="scan"), last3)
        record_run(root / "silu" / "model7-m" / f"seed-{s}",
                   default_config("model7-m", seed=s, pipeline="scan", ema_decay=0.999),
                   (99.50, 99.46, 99.48) if s == 0 else (99.39, 99.60, 99.60))
    record_run(tmp_path / "model7-g" / "seed-0", default_config("model7-g", seed=0),
               (99.9, 99.9, 99.9))  # a CPU run of the same seed: not the screen's baseline
    (root / "commands.jsonl").write_text(json.dumps(
        {"trial": "silu", "command": "python scripts/sweep.py --model model7-m"}) + "\n")
    base, silu = trials.gpu_trials(tmp_path)
    assert base["name"] == trials.GPU_BASELINE and base["model"] == "model7-g"
    assert silu["model"] == "model7-m" and silu["command"].endswith("--model model7-m")
    assert silu["changes"] == {"model": ("model7-g", "model7-m"), "ema_decay": (0.0, 0.999)}
    assert silu["paired_seeds"] == 2 and silu["runs"]["seeds_holding_target"] == 1  # 99.39
    assert silu["paired_difference"] == pytest.approx((0.08 + 0.03) / 2)
    assert trials.gpu_trials(tmp_path / "nowhere") == []
    # The models table does not call a design screened on the GPU alone "not run".
    from s7jax.runs import runfiles
    from tools.report.results import models_table

    models = results.all_models(tmp_path)["models"]
    run = tmp_path / "model7-g" / "seed-0"
    table = models_table(models, {"model7-g": (run, runfiles.read_record(run),
                                               runfiles.read_metrics(run))}, tmp_path,
                         {t["model"] for t in trials.gpu_trials(tmp_path)})
    (not_run,) = [line for line in table if line.startswith("Not run yet")]
    (gpu_only,) = [line for line in table if line.startswith("Run on a GPU only")]
    assert "model7-m" not in not_run and "model7-e" in not_run
    assert gpu_only.startswith("Run on a GPU only: model7-m (")


def test_a_trial_that_turns_a_setting_on_names_it_and_its_flag(tmp_path):
    from s7jax.config import default_config
    from tools.report.results import _trial_row

    record_run(tmp_path / "model6" / "seed-0", default_config(seed=0, pipeline="device"),
               (99.5, 99.5, 99.5))
    record_run(tmp_path / trials.TRIALS / "taught" / "model6" / "seed-0",
               default_config(seed=0, pipeline="device", teacher="results/model6/seed-1"),
               (99.6, 99.6, 99.6))
    default, taught = trials.after_fix(tmp_path)
    assert taught["changes"] == {"teacher": (None, "results/model6/seed-1")}
    row = _trial_row("model6", taught, default["settings"], "(today's recipe)", None)
    assert "| teacher none -> results/model6/seed-1 |" in row
    assert row.endswith("`python scripts/sweep.py --model model6 --seeds 1 "
                        "--teacher results/model6/seed-1` |")

def test_the_trials_table_says_how_large_chance_alone_is():
    from tools.report.results import trial_noise

    def trial(n, std, difference=None, se=None):
        return {"name": f"t{n}", "runs": {"n_seeds": n, "std": std},
                "paired_difference": difference, "paired_se": se}

    (text,) = trial_noise([trial(11, 0.05), trial(20, 0.04, 0.02, 0.009),
                           trial(3, 0.2, -0.07, 0.003), trial(4, 0.1, 0.03, 0.02)])[1:]
    assert text.startswith("How large chance alone is: over its 20 seeds, t20's last-3 means "
                           "spread with a std of 0.040.")
    assert text.endswith(" Beyond twice it: t20 (better), t3 (worse).")  # not t4: 1.5 of its SE
    (text,) = trial_noise([trial(11, 0.05), trial(20, 0.04, 0.01, 0.009), trial(1, 0, 0.3)])[1:]
    assert text.endswith(" No trial differs from the runs it is set against by more than twice it.")
    assert trial_noise([trial(4, 0.05), trial(3, 0.05)]) == []  # too few seeds to say


def test_a_cycle_over_the_whole_run_is_one_setting_however_it_was_recorded():
    from s7jax.config import default_config

    whole = trials.flat(default_config(cycle_epochs=None))
    assert whole == trials.flat(default_config(cycle_epochs=15))
    assert whole["cycle_epochs"] == 15
    assert trials.flat(default_config(cycle_epochs=14))["cycle_epochs"] == 14


def test_the_recipe_says_where_a_short_cycle_ends_and_the_rate_after_it():
    from s7jax.config import default_config
    from tools.report.study import recipe

    def text(**overrides):
        return recipe({"config": default_config("model6", **overrides).to_json()})

    assert "onecycle lr 0.1, batch 128" in text(cycle_epochs=None)  # the whole run: nothing to say
    assert "onecycle lr 0.1, batch 128" in text(cycle_epochs=15)
    assert "onecycle lr 0.1 over 14 epochs, then its final rate 0.0001 in epoch 15," in text(
        cycle_epochs=14)
    assert "over 12 epochs, then its final rate 0.0001 in epochs 13-15," in text(cycle_epochs=12)


@pytest.mark.parametrize("trial_holds", [19, 18])
def test_a_frontier_designs_recipe_trial_over_20_seeds_can_reach_the_frontier(tmp_path,
                                                                              trial_holds):
    from s7jax.config import default_config
    from tools.report.results import model7_designs

    for s in range(20):
        record_run(tmp_path / "model7-g" / f"seed-{s}", default_config("model7-g", seed=s),
                   (99.45, 99.45, 99.45) if s < 16 else (99.39, 99.41, 99.41))
        record_run(tmp_path / "model7-m" / f"seed-{s}", default_config("model7-m", seed=s),
                   (99.30, 99.30, 99.30))
        record_run(tmp_path / trials.TRIALS / "ema" / "model7-m" / f"seed-{s}",
                   default_config("model7-m", seed=s, ema_decay=0.999),
                   (99.47, 99.47, 99.47) if s < trial_holds else (99.38, 99.42, 99.42))
    models = results.all_models(tmp_path)["models"]
    design_trials = {n: trials.after_fix(tmp_path, n) for n in ("model7-g", "model7-m")}
    lines = model7_designs(models, results.TARGET, "../", design_trials)
    (frontier,) = [line for line in lines if line.startswith("The frontier")]
    if trial_holds == 19:
        assert frontier.endswith("reached by model7-m (ema).")
        for s in range(20, 40):  # 19 of 40 is no longer 19 of 20
            record_run(tmp_path / trials.TRIALS / "ema" / "model7-m" / f"seed-{s}",
                       default_config("model7-m", seed=s, ema_decay=0.999), (99.3, 99.3, 99.3))
        design_trials = {n: trials.after_fix(tmp_path, n) for n in ("model7-g", "model7-m")}
        (again,) = [line for line in model7_designs(models, results.TARGET, "../", design_trials)
                    if line.startswith("The frontier")]
        assert "not reached" in again
    else:  # model7-g's 16 of 20 is not the closest any more
        assert "not reached; the closest, model7-m (ema), holds on 18 of 20" in frontier
    (versus,) = [line for line in lines if line.startswith("model7-m (ema) against model7-g")]
    assert "on the same 20 seeds" in versus


def test_a_design_past_5000_that_holds_is_not_the_frontier_but_says_where_it_lies(tmp_path):
    from s7jax.config import default_config
    from tools.report.results import model7_designs

    for s in range(20):
        record_run(tmp_path / "model7-m" / f"seed-{s}", default_config("model7-m", seed=s),
                   (99.45, 99.45, 99.45) if s < 17 else (99.38, 99.41, 99.41))
        record_run(tmp_path / "model7-p" / f"seed-{s}", default_config("model7-p", seed=s),
                   (99.50, 99.50, 99.50) if s < 19 else (99.38, 99.41, 99.41))
    models = results.all_models(tmp_path)["models"]
    design_trials = {"model7-m": trials.after_fix(tmp_path, "model7-m")}
    lines = model7_designs(models, results.TARGET, "../", design_trials)
    (frontier,) = [line for line in lines if line.startswith("The frontier")]
    assert "not reached; the closest, model7-m, holds on 17 of 20" in frontier
    (past,) = [line for line in lines if line.startswith("Past the bound")]
    assert "model7-p (6, 8 / 12, 12 /" in past and "holds on 19 of 20 seeds" in past
    assert "; against model7-m on the same 20 seeds, +0.05" in past
    assert "and model7-p past 5,000" in lines[1]


def test_the_study_step_sentence_gives_the_length_of_runs_that_differ_in_it():
    from tools.report.study import step_sentence

    def runs(mean, epochs):
        return {"mean": mean, "seeds": {"0": {"epochs": epochs}}}

    table = {"model1": {"original": runs(99.06, 3), "referee": runs(99.23, 15)},
             "model2": {"original": runs(99.10, 15), "referee": runs(99.02, 15)}}
    assert step_sentence("model1", table, None).endswith(
        "s7jax 99.06% after 3 epochs, the PyTorch referee 99.23% after 15 epochs.")
    # Equal lengths: no length, and a step is set against the last only over equal runs.
    assert step_sentence("model2", table, "model1").endswith(
        "s7jax 99.10%, the PyTorch referee 99.02% (-0.21 against model1).")


def test_the_study_steps_in_words_name_each_models_own_parameter_count():
    import re

    import jax

    from s7jax.models import count_params, get_model, init_variables
    from tools.report.study import STEPS

    for name, (text, _) in STEPS.items():
        total = count_params(jax.eval_shape(lambda n=name: init_variables(
            get_model(n), jax.random.key(0, impl="rbg"))))
        exact = re.search(r"\(([\d,]+)(?: parameters)?\)", text)
        if exact:
            assert int(exact[1].replace(",", "")) == total, name
        else:  # model1's, in millions
            assert f"{total / 1e6:.1f}M parameters" in text, name


def test_the_readmes_headline_names_a_design_past_5000_with_its_counted_parameters(tmp_path):
    from s7jax.config import default_config
    from tools.report.results import headline

    for s in range(3):
        record_run(tmp_path / "model7-p" / f"seed-{s}", default_config("model7-p", seed=s),
                   (99.5, 99.5, 99.3 if s == 2 else 99.5))
    (line,) = [x for x in headline(tmp_path).splitlines() if x.startswith("**model7-p")]
    assert line.startswith("**model7-p over 3 seeds** (beyond the study: 5,652 parameters, "
                           "where model6 has 7,664): 2 of 3 hold >= 99.4%")
