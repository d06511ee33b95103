"""Summaries over seeds: the mean, its interval, who holds and who is worst."""

from __future__ import annotations

import pytest

from s7jax import results


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
