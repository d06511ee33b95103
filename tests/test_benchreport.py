"""The benchmark tables (tools.bench.tables) say what the measurements say, and
the report (tools.report) writes them, and the results, into README.md and docs/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tools.bench import tables

ROOT = Path(__file__).resolve().parent.parent


def bench_result(epoch_s=10.0, step=6000.0, eval_s=0.5, memory_mib=900):
    return {
        "s7jax": {"epoch_device": {"seconds": epoch_s, "images_per_s": 59904 / epoch_s},
                  "step_images_per_s": step, "eval": {"seconds": eval_s},
                  "default_path": {"maxrss_kib": memory_mib * 1024},
                  "maxrss_kib": 1800 * 1024},
        "pytorch": {"epoch": {"seconds": 23.0, "images_per_s": 60000 / 23.0},
                    "step_images_per_s": 3300.0, "eval": {"seconds": 1.0},
                    "maxrss_kib": 1150 * 1024,
                    "step_best": {"variant": "compile_channels_last", "images_per_s": 4000.0}},
    }


def test_goals_are_judged_from_the_measured_ratios():
    text = tables.goals(bench_result())
    # Per image: s7jax's epoch leaves out a short last batch (59,904 of 60,000 images).
    assert "training epoch 2.296x (goal 2x: met)" in text
    assert "train step 1.818x (goal 1.5x: met)" in text
    assert "evaluation 2.000x (goal 2x: met)" in text
    assert "peak memory 900 MiB against 1,150 MiB (goal: at most PyTorch's: met)" in text
    assert "(compile channels last, 4,000 img/s): 1.50x" in text
    slow = tables.goals(bench_result(epoch_s=12.0, eval_s=0.6, memory_mib=1200))
    assert "training epoch 1.914x (goal 2x: not met)" in slow
    assert "evaluation 1.667x (goal 2x: not met)" in slow
    assert "(goal: at most PyTorch's: not met)" in slow
    assert tables.goals({"s7jax": {}, "pytorch": {}}) is None  # an older file


def test_parts_table_sums_layers_and_names_the_rest():
    part = lambda name, layer, ms: dict(part=name, layer=layer, ms=ms, flops=1e6, bytes=2**20)  # noqa: E731
    result = {"model": "model6", "batch_size": 128, "steps_per_epoch": 468, "repeats": 3,
              "limit": {"gflops": 100.0, "gbytes_per_s": 50.0, "gbytes_per_s_256mib": 20.0},
              "step": {"ms": 10.0, "flops": 3e6, "bytes": 3 * 2**20},
              "parts": [part("conv weight gradient", "conv1", 2.0), part("conv forward", "conv1", 3.0),
                        part("conv forward", "conv2", 1.0)],
              "per_step": [dict(part="dispatch", ms=0.5)],
              "per_epoch": [dict(part="evaluation", ms=1000.0)]}
    table = tables.parts_table(result)
    lines = table.splitlines()
    assert lines[2].startswith("| conv forward (2 layers) | 4.00 | 40% | 2.0 | 2.0 |")
    assert lines[3].startswith("| conv weight gradient | 2.00 | 20% |")
    assert "| the rest (ReLU, loss, fusion across parts) | 4.00 | 40% |" in table
    # 468 steps of 10 ms and 0.5 ms, and one evaluation of a second.
    assert "| **an epoch, from its parts** | | | 5.91 |" in table


def test_a_missed_step_goal_is_explained_from_the_step_and_parts_files():
    from tools.report.performance import step_shortfall

    step = {"backend": "cpu", "variants": {
        "s7jax": {"ratio_to_s7jax": 1.0}, "nn.max_pool": {"ratio_to_s7jax": 1.7},
        "4 steps per jit call": {"ratio_to_s7jax": 0.9},
        "no conv weight gradient": {"ratio_to_s7jax": 0.8}}}  # a bound, not a formulation
    part = lambda name, ms, flops: dict(part=name, layer="conv1", ms=ms, flops=flops, bytes=1.0)  # noqa: E731
    parts = {"backend": "cpu", "limit": {"gflops": 100.0, "gbytes_per_s": 50.0},
             "step": {"ms": 10.0}, "parts": [part("conv forward", 4.0, 8e7),
                                             part("conv weight gradient", 4.0, 8e7),
                                             part("BatchNorm forward", 2.0, 1e6)]}
    assert step_shortfall(bench_result(step=6000.0), step, parts) is None  # 1.818x: met
    text = step_shortfall(bench_result(step=4620.0), step, parts)  # 1.400x
    assert "1.400x the original's, where 1.5x needs a step 7.1% faster" in text
    assert "Of the 2 other formulations in step-cpu.json, the fastest, 4 steps per jit call, " \
           "takes 0.90x s7jax's step time." in text
    assert "take 80% of the step at 20 GFLOP/s, 20% of the machine's matrix-multiply peak" in text
    assert text.endswith("without any weight gradient the step would take 0.80x its time.")
    assert step_shortfall(bench_result(step=4620.0), None, parts) is None  # nothing to explain from


def test_refusals_table_has_a_row_per_fault():
    rows = [{"fault": "a bad flag", "exit": 2, "seconds": 0.86, "cpu_seconds": 0.97},
            {"fault": "no intact checkpoint", "exit": 2, "seconds": 1.94, "cpu_seconds": 2.0}]
    assert tables.refusals_table(rows).splitlines()[2:] == [
        "| a bad flag | 2 | 0.9 | 1.0 |", "| no intact checkpoint | 2 | 1.9 | 2.0 |"]


def test_runs_listed_as_before_the_fix_are_marked(tmp_path):
    from tools.report import before_fix

    (tmp_path / before_fix.MANIFEST).write_text(
        "# a comment, not a pattern: model6/*\nrecipe-trials/*\nmodel1/seed-0/\n")
    marked = [tmp_path / "recipe-trials" / "previous" / "model6" / "seed-3",
              tmp_path / "model1" / "seed-0"]
    unmarked = [tmp_path / "model6" / "seed-0", tmp_path / "model1" / "seed-1",
                tmp_path / "model1" / "original-seed-0"]
    assert all(before_fix.before_fix(tmp_path, r) for r in marked)
    assert not any(before_fix.before_fix(tmp_path, r) for r in unmarked)
    assert before_fix.mark(tmp_path, unmarked) == ""
    assert before_fix.mark(tmp_path, [*unmarked, marked[1]]) == before_fix.MARK
    table = ["| model | acc |", f"| model1{before_fix.MARK} | 99.1 |"]
    assert before_fix.footnote(table)[-1].startswith(f"{before_fix.MARK} Trained before the "
                                                     "max-pool gradient fix")
    assert before_fix.footnote(table[:1]) == table[:1]
    (tmp_path / before_fix.MANIFEST).unlink()  # no manifest: nothing is marked
    assert not before_fix.before_fix(tmp_path, marked[1])


@pytest.fixture
def checkout(tmp_path):
    """The README and docs of this checkout, copied, to write or spoil."""
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    return tmp_path


def test_check_names_each_stale_file_and_a_run_rewrites_only_the_blocks(checkout, capsys):
    from tools.report import pages

    args = ["--root", str(checkout), "--results", str(ROOT / "results")]
    assert pages.main([*args, "--check"]) == 0
    results_md = checkout / "docs" / "results.md"
    fresh = results_md.read_text()
    # A number inside the generated block, and a stale headline in the README.
    results_md.write_text(fresh.replace("<!-- results:end -->", "| model9 | 1 |\n<!-- results:end -->"))
    readme = (checkout / "README.md").read_text()
    (checkout / "README.md").write_text(readme.replace(
        "<!-- headline-performance:end -->", "- stale\n<!-- headline-performance:end -->"))
    capsys.readouterr()
    assert pages.main([*args, "--check"]) == 1
    err = capsys.readouterr().err
    assert f"{results_md} is out of date" in err and f"{checkout / 'README.md'} is out of date" in err
    assert "performance.md" not in err and "training.md" not in err
    # Written again from the results (the figures left alone: a check draws none).
    pages_text = pages.generate(checkout, ROOT / "results", write_plots=False)
    for path, (old, new) in pages_text.items():
        path.write_text(new)
    assert results_md.read_text() == fresh and (checkout / "README.md").read_text() == readme
    # The prose around the blocks is the page's own: kept as written.
    assert results_md.read_text().startswith("# Results\n")


def test_a_page_without_its_markers_is_named(checkout, capsys):
    from tools.report import pages

    perf = checkout / "docs" / "performance.md"
    perf.write_text(perf.read_text().replace("<!-- performance:begin -->", ""))
    with pytest.raises(SystemExit) as exit:
        pages.main(["--check", "--root", str(checkout), "--results", str(ROOT / "results")])
    assert exit.value.code == 2
    assert "docs/performance.md lacks the markers <!-- performance:begin -->" in capsys.readouterr().err


def test_the_docs_mark_the_runs_trained_before_the_fix():
    """What results/before-the-pool-fix.txt lists carries the dagger where the
    docs show it (the recipe trials), and what it does not list does not."""
    from tools.report import before_fix, results

    text = results.results_section(ROOT / "results", write_plots=False)
    assert f"| previous{before_fix.MARK} |" in text
    assert f"`results/model6/seed-0`{before_fix.MARK}" not in text
    assert "`results/model6/seed-0` re-trained" in text
    assert "Trained before the max-pool gradient fix" in text
