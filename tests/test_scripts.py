"""The command-line scripts, run as a user runs them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from s7jax import data
from s7jax.runs import runfiles, weights

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--epochs", "2", "--train-subset", "512", "--test-subset", "256", "--batch-size", "64",
         "--eval-batch-size", "128", "--no-progress"]


def run(script, *args, env=None, cwd=None):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=600, cwd=cwd)


def assert_clean_error(result, code, pattern):
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert re.search(pattern, lines[-1]), lines[-1]


@pytest.fixture(scope="module")
def cli_run(tfds_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cli") / "run"
    result = run("train.py", "--model", "model6", *QUICK, "--workdir", workdir, "--data-dir", tfds_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


@pytest.mark.slow
def test_train_script_prints_summary_table_and_final_line(cli_run):
    _, result = cli_run
    out = result.stdout
    assert "backend cpu" in out and "mesh {'data': 1}" in out
    assert re.search(r"conv7\s+Conv 3x3\s+\(1, 1, 10\)\s+910\s+40", out)  # per-layer summary with RF
    assert re.search(r"^total\s+7,664$", out, re.M)
    assert "epoch         lr  train loss  train acc  test loss  test acc  seconds" in out
    assert re.search(r"^\s+2\s+\S+\s+\d", out, re.M)
    assert re.search(r"best test acc [\d.]+% \(epoch \d\), last [\d.]+% \(epoch 2\)", out)


@pytest.mark.slow
def test_train_script_writes_every_artifact(cli_run):
    workdir, _ = cli_run
    rows = runfiles.read_metrics(workdir)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(tuple(r) == runfiles.METRIC_KEYS for r in rows)
    config = json.loads((workdir / "config.json").read_text())
    assert config["config"]["model"] == "model6" and config["config"]["train_subset"] == 512
    assert {"jax", "flax", "optax", "tensorflow_datasets", "devices"} <= set(config["environment"])
    assert (workdir / "curves.png").stat().st_size > 10_000
    model, _, info = weights.load(workdir / "weights.msgpack")  # the last epoch's, checked
    assert (model, info["epoch"], info["test_acc"]) == ("model6", 2, rows[-1]["test_acc"])
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [8, 16]  # the last two epochs' states


@pytest.mark.slow
def test_evaluate_reproduces_the_last_metrics(cli_run, tfds_dir, tmp_path):
    workdir, _ = cli_run
    last = runfiles.read_metrics(workdir)[-1]
    gallery = tmp_path / "wrong.png"
    result = run("evaluate.py", "--checkpoint", workdir, "--data-dir", tfds_dir,
                 "--misclassified", gallery)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"test loss {last['test_loss']:.4f}, test acc {last['test_acc']:.2f}%" in result.stdout
    assert gallery.stat().st_size > 1_000


@pytest.mark.parametrize("args,pattern", [
    (["--model", "model9"], r"--model: invalid choice: 'model9' \(choose from 'model1', .*'model6', 'model7'.*\)"),
    (["--epochs", "16"], r"--epochs must be in 1\.\.15.*--allow-long"),
    (["--lr", "-0.1"], r"--lr must be positive"),
    (["--lr", "inf"], r"--lr must be positive and finite, got inf"),
    (["--weight-decay", "inf"], r"--weight-decay must be >= 0 and finite, got inf"),
    (["--pipeline", "scan", "--steps-per-call", "2"], r"--steps-per-call applies to --pipeline tfds"),
    (["--batch-size", "0"], r"--batch-size must be positive"),
    (["--steps-per-call", "0"], r"--steps-per-call must be positive"),
    (["--frobnicate"], r"unrecognized arguments: --frobnicate"),
    (["--epochs", "two"], r"invalid int value: 'two'"),
])
def test_bad_flags_give_one_line_and_exit_2(in_process, args, pattern):
    assert_clean_error(in_process("train", *args), 2, pattern)


def test_unwritable_workdir(in_process, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_clean_error(in_process("train", "--workdir", blocker / "run"), 2,
                       r"workdir .* is not writable")


def test_missing_data_file(in_process, tmp_path):
    manual = tmp_path / "mnist"
    shutil.copytree(data.default_manual_dir(), manual)
    (manual / "t10k-images-idx3-ubyte.gz").unlink()
    result = in_process("train", "--workdir", tmp_path / "run", "--data-dir", tmp_path / "tfds",
                        "--manual-dir", manual)
    assert_clean_error(result, 2, r"missing MNIST file .*t10k-images-idx3-ubyte.gz")


@pytest.mark.slow
def test_nan_loss_exits_3_naming_epoch_and_step(tfds_dir, tmp_path):
    result = run("train.py", *QUICK, "--lr", "1e30", "--schedule", "constant",
                 "--workdir", tmp_path / "run", "--data-dir", tfds_dir)
    assert_clean_error(result, 3, r"non-finite loss in epoch 1 at step \d+")


def test_resume_needs_a_run_directory(in_process, tmp_path):
    assert_clean_error(in_process("train", "--resume", tmp_path), 2, r"no config.json there")


def test_evaluate_without_a_run(in_process, tmp_path):
    assert_clean_error(in_process("evaluate", "--checkpoint", tmp_path), 2, r"no run's config.json")


def test_readme_and_docs_tables_are_generated_from_results():
    result = run("report.py", "--check", cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    for page in ("README.md", "docs/results.md", "docs/performance.md", "docs/training.md"):
        assert page in result.stdout  # every generated file is checked


def test_the_readme_is_a_front_page_linking_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in readme, page.name
    # No commit hashes or dates: CHANGELOG.md and the git history keep those.
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), path.name
        assert not re.search(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", text), path.name


@pytest.mark.slow
def test_reproduce_repeats_a_recorded_run_exactly(cli_run, tfds_dir, tmp_path):
    workdir, _ = cli_run
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    for name in ("config.json", "metrics.jsonl"):  # what results/ commits of a run
        shutil.copy(workdir / name, recorded / name)
    result = run("reproduce.py", recorded, "--workdir", tmp_path / "repeat", "--data-dir", tfds_dir,
                 "--no-progress")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    verdict = json.loads((recorded / "reproduce.json").read_text())
    assert verdict["reproduced"] and verdict["differences"] == []
    assert verdict["epochs_compared"] == 2
    assert runfiles.read_metrics(tmp_path / "repeat")[-1]["test_acc"] == \
        runfiles.read_metrics(recorded)[-1]["test_acc"]


def test_metric_differences_name_every_changed_figure_but_seconds():
    rows = [{"epoch": 1, "test_acc": 99.1, "train_loss": 0.5, "seconds": 40.0},
            {"epoch": 2, "test_acc": 99.2, "train_loss": 0.4, "seconds": 41.0}]
    same_but_slower = [dict(r, seconds=r["seconds"] + 7) for r in rows]
    assert runfiles.metric_differences(rows, same_but_slower) == []
    changed = [rows[0], dict(rows[1], test_acc=99.21)]
    assert runfiles.metric_differences(rows, changed) == ["epoch 2: test_acc 99.21, expected 99.2"]
    assert runfiles.metric_differences(rows, rows[:1]) == ["1 epochs, expected 2"]


def test_reproduce_warns_before_training_when_the_core_count_differs():
    from s7jax.cli.reproduce import core_count_note

    one_core = {"backend": "cpu", "cpu_count": 2, "cpu": {"cores_usable": 1}}
    assert core_count_note(one_core, {"cores_usable": 1}) is None
    note = core_count_note(one_core, {"cores_usable": 2})
    assert "recorded on 1 usable core and this process has 2" in note
    assert "`taskset -c 0-0`" in note
    older = {"backend": "cpu", "cpu_count": 4, "cpu": None}  # before cores_usable was recorded
    assert "cannot give it as many" in core_count_note(older, {"cores_usable": 2})
    assert core_count_note(dict(one_core, backend="gpu"), {"cores_usable": 2}) is None
    assert core_count_note(one_core, None) is None  # not Linux: nothing known here


def test_reproduce_needs_a_recorded_run(in_process, tmp_path):
    assert_clean_error(in_process("reproduce", tmp_path), 2, r"no config.json there")


@pytest.mark.slow
def test_bench_step_times_every_variant_and_checks_bit_identity(tmp_path):
    out = tmp_path / "step.json"
    result = run("bench_step.py", "--steps", "4", "--rounds", "1", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    v = json.loads(out.read_text())["variants"]
    assert v["s7jax"]["ratio_to_s7jax"] == 1.0
    assert all(r["median_ms_per_step"] > 0 for r in v.values())
    # A step without the weight gradient trains something else.
    assert not v["no conv weight gradient"]["same_state_as_s7jax"]
    assert v["s7jax"]["same_state_as_s7jax"]
    assert "| s7jax | " in result.stdout


@pytest.mark.slow
def test_bench_parts_covers_every_layer_of_the_step(tmp_path):
    """Every layer's parts are timed, the parts' FLOPs add up to the step's
    (what XLA fuses across parts moves bytes, not FLOPs), and the table and
    the machine's limit are reported."""
    out = tmp_path / "parts.json"
    result = run("bench_parts.py", "--repeats", "1", "--batch-size", "16", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads(out.read_text())
    layers = {}
    for p in r["parts"]:
        layers.setdefault(p["part"], []).append(p["layer"])
    assert layers["conv forward"] == [f"conv{i}" for i in range(1, 8)]
    assert layers["conv input gradient"] == [f"conv{i}" for i in range(2, 8)]  # not the images'
    assert layers["conv weight gradient"] == [f"conv{i}" for i in range(1, 8)]
    assert layers["BatchNorm forward"] == [f"bn{i}" for i in range(1, 6)]
    assert layers["dropout forward"] == [f"drop{i}" for i in range(1, 5)]
    assert layers["max-pool backward"] == ["pool1", "pool2"]
    parts_flops = sum(p["flops"] for p in r["parts"])
    assert abs(parts_flops / r["step"]["flops"] - 1) < 0.1
    assert r["limit"]["gflops"] > 0 and r["limit"]["gbytes_per_s"] > 0
    assert "| **the whole step** |" in result.stdout


def test_bench_step_rejects_a_step_count_it_cannot_split(tmp_path):
    assert_clean_error(run("bench_step.py", "--steps", "3"), 2, r"--steps must be a positive multiple of 4")


@pytest.mark.parametrize("train_acc, phrase", [
    (99.90, "fits its training set better than it generalises"),
    (99.50, "only 0.10 points above test accuracy: little overfitting"),
    (99.20, "(measured with dropout on) ends 0.20 points below"),
])
def test_report_names_a_train_test_gap_by_its_size(train_acc, phrase):
    from tools.report import study
    history = [{"epoch": 1, "test_acc": 98.0, "train_acc": 97.0},
               {"epoch": 2, "test_acc": 99.4, "train_acc": train_acc}]
    text = study.analysis("model4", history, {"mean": 99.4}, None,
                           {"dropout": True, "augmentation": False})
    assert phrase in text
    assert "Epoch 1 reached 98.00%" in text and "99.4% first in epoch 2." in text


def test_report_compares_runs_of_different_lengths_at_a_shared_epoch():
    from tools.report import study
    short = [{"epoch": e, "test_acc": a, "train_acc": a} for e, a in ((1, 98.9), (2, 99.1))]
    long = [{"epoch": e, "test_acc": 97.0 + e / 4, "train_acc": 99.0} for e in range(1, 6)]
    text = study.analysis("model2", long, {"mean": 99.4}, ("model1", short, {"mean": 99.0}),
                           {"dropout": False, "augmentation": False})
    assert "Against model1 at epoch 2 (the shorter run's last): 97.50% vs 99.10%." in text
    assert "99.4% not reached in 5 epochs." in text


@pytest.mark.parametrize("model,lr", [(None, "0.1"), ("model3", "0.05")])
def test_help_shows_the_recipe_of_the_model_given(in_process, model, lr):
    result = in_process("train", *(["--model", model] if model else []), "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    name = model or "model6"
    assert f"[{name}: {lr}]" in text and "--precise-bn PRECISE_BN" in text
    assert "(default: None)" not in text


def test_print_config_prints_the_resolved_config_and_writes_nothing(in_process, tmp_path):
    result = in_process("train", "--print-config", "--model", "model5", "--lr", "0.2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads(result.stdout)
    assert (config["model"], config["lr"], config["schedule"]) == ("model5", 0.2, "onecycle")
    assert config["pipeline"] == "device" and config["data_source"] == "idx"  # auto, resolved
    assert list(tmp_path.iterdir()) == []


def test_importing_s7jax_plots_leaves_the_matplotlib_backend_alone(tmp_path):
    code = ("import matplotlib; matplotlib.use('svg'); import sys; sys.path.insert(0, sys.argv[1]);"
            "from s7jax.runs import plots;"
            "rows = [dict(epoch=1, train_loss=1.0, test_loss=0.9, train_acc=90.0, test_acc=91.0)];"
            "plots.curves(rows, sys.argv[2]); print(matplotlib.get_backend())")
    out = tmp_path / "curves.png"
    result = subprocess.run([sys.executable, "-c", code, str(ROOT), str(out)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "svg"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
