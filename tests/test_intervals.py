"""Intervals: the cluster bootstrap (people resampled, not questions) and the met / not met / undecided rule."""

import numpy as np
import pytest

from vkd_jax.eval.intervals import cluster_ci, judge, with_intervals

pytestmark = pytest.mark.unit


def test_cluster_ci_covers_the_mean_and_is_reproducible():
    rng = np.random.default_rng(0)
    people = np.repeat(np.arange(40), 4)
    values = 100.0 * (rng.random(160) < 0.3)
    lo, hi = cluster_ci(people, values, "m")
    assert lo < values.mean() < hi
    assert (lo, hi) == cluster_ci(people, values, "m")  # seeded by the metric's name
    # a binomial-sized interval at n=160, p=0.3: about +-7 points; the bootstrap must be of that order
    assert 8 < hi - lo < 20


def test_clustering_by_person_widens_the_interval_when_people_differ():
    """Each person either knows all 4 answers or none: 40 people, not 160 independent questions."""
    people = np.repeat(np.arange(40), 4)
    values = np.repeat(100.0 * (np.arange(40) % 3 == 0), 4)
    per_person = cluster_ci(people, values, "m")
    per_question = cluster_ci(np.arange(160), values, "m")
    assert (per_person[1] - per_person[0]) > 1.6 * (per_question[1] - per_question[0])


def test_constant_values_give_a_point_interval_and_empty_gives_none():
    assert cluster_ci(["a", "a", "b"], [50.0, 50.0, 50.0]) == (50.0, 50.0)
    out = with_intervals({"x": [], "y": [("a", 1.0), ("b", 0.0)]})
    assert out["x_ci95"] is None and np.isnan(out["x"])
    assert out["y"] == 0.5 and out["y_ci95"][0] <= 0.5 <= out["y_ci95"][1]


def test_judge():
    assert judge([10, 20], None, 30) == "met"
    assert judge([35, 40], None, 30) == "not met"
    assert judge([25, 35], None, 30) == "undecided"
    assert judge([-2, 1], -3, None) == "met"
    assert judge([-9, -4], -3, None) == "not met"
    assert judge([0, 0], 0, 0) == "met"
    assert judge(None, 0, 1) == "undecided"
