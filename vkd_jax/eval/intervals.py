"""95% intervals by bootstrap over clusters: people within a run (one person's questions are not independent),
runs (pipeline seeds x forget splits) across runs.

    lo, hi = cluster_ci(people, values)         # the mean of `values` (one per question), people resampled
    with_intervals({"vqa_cls_acc": [(person, value), ...], ...})  # {metric: mean, metric_ci95: [lo, hi], metric_n}

Percentile intervals of `N_BOOT` resamples; every resample is drawn from a generator seeded by the metric's name
(crc32), so an interval is the same in every process and on every rerun.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

N_BOOT = 2000


def cluster_ci(clusters: Sequence, values: Sequence[float], name: str = "", n_boot: int = N_BOOT
               ) -> tuple[float, float]:
    """(lo, hi) of the 95% percentile interval of mean(values), resampling whole clusters with replacement (the
    mean of a resample is its questions' mean: sum over drawn clusters / their question count)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return (math.nan, math.nan)
    _, inv = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    sums, counts = np.bincount(inv, weights=v), np.bincount(inv).astype(np.float64)
    k = sums.size
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    draws = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(np.float64)
    stats = (draws @ sums) / (draws @ counts)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return (float(lo), float(hi))


def with_intervals(per_question: Mapping[str, Sequence[tuple]], prefix: str = "") -> dict:
    """{metric: [(cluster, value), ...]} -> {metric: mean, metric_ci95: [lo, hi]} (NaN and no interval when a
    metric has no questions)."""
    out = {}
    for metric, pairs in per_question.items():
        if not pairs:
            out[metric] = math.nan
            out[f"{metric}_ci95"] = None
            continue
        clusters, values = zip(*pairs)
        out[metric] = float(np.mean(values))
        out[f"{metric}_ci95"] = list(cluster_ci(clusters, values, prefix + metric))
    return out


def half_width(ci) -> float | None:
    return None if not ci else (ci[1] - ci[0]) / 2.0


def judge(ci, low: float | None = None, high: float | None = None) -> str:
    """A target `low <= x <= high` judged by x's interval: met (inside), not met (outside), undecided."""
    if not ci or any(c is None or (isinstance(c, float) and math.isnan(c)) for c in ci):
        return "undecided"
    lo, hi = ci
    inside = (low is None or lo >= low) and (high is None or hi <= high)
    outside = (low is not None and hi < low) or (high is not None and lo > high)
    return "met" if inside else "not met" if outside else "undecided"
