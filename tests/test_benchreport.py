"""The benchmark tables (tools.bench.tables) say what the measurements say."""

from __future__ import annotations

from tools.bench import tables


def bench_result(epoch_s=10.0, step=6000.0, eval_s=0.5, memory_mib=900):
    return {
        "s7jax": {"epoch_device": {"seconds": epoch_s, "images_per_s": 59904 / epoch_s},
                  "step_images_per_s": step, "eval": {"seconds": eval_s},
                  "default_path": {"maxrss_kib": memory_mib * 1024},
                  "maxrss_kib": 1800 * 1024},
        "pytorch": {"epoch": {"seconds": 23.0, "images_per_s": 2600.0},
                    "step_images_per_s": 3300.0, "eval": {"seconds": 1.0},
                    "maxrss_kib": 1150 * 1024,
                    "step_best": {"variant": "compile_channels_last", "images_per_s": 4000.0}},
    }


def test_goals_are_judged_from_the_measured_ratios():
    text = tables.goals(bench_result())
    assert "training epoch 2.300x (goal 2x: met)" in text
    assert "train step 1.818x (goal 1.5x: met)" in text
    assert "evaluation 2.000x (goal 2x: met)" in text
    assert "peak memory 900 MiB against 1,150 MiB (goal: at most PyTorch's: met)" in text
    assert "(compile channels last, 4,000 img/s): 1.50x" in text
    slow = tables.goals(bench_result(epoch_s=12.0, eval_s=0.6, memory_mib=1200))
    assert "training epoch 1.917x (goal 2x: not met)" in slow
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
