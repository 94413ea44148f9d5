"""One run against another on the same pipeline seed, question by question: paired 95% intervals.

Two runs from one vanilla model are scored on the same questions about the same people (same forget splits), so
their difference has a much narrower interval than either run's own. Each headline column becomes a goodness
score, and the interval of `goodness(a) - goodness(b)` is a bootstrap over people that draws the same people for
both runs (and for the vanilla model and the identity-free floor they are judged against):

- a column to lower (forget / test VQA): minus the distance to the identity-free floor where the benchmark has one
  (MLLMU-Bench's forget VQA: under the floor is no better than at it, it gives the answer away), else minus
  max(value, chance);
- a column to keep (text QA): minus the distance to vanilla, question by question in the mean;
- a column to raise (retain, celebrity, real faces): the value.

`a` beats `b` when no column is worse by its interval and at least one is better; loses when the reverse holds;
mixed when both; undecided when no interval excludes 0.
"""

from __future__ import annotations

import json
import math
import os
import zlib

import numpy as np

from vkd_jax.eval.intervals import N_BOOT
from vkd_jax.io_utils import read_json_if_exists, read_text
from vkd_jax.workdir import split_dir


class NotPaired(ValueError):
    """The two runs were not scored on the same questions (another split plan): no paired comparison."""


def _predictions(folder: str, name: str) -> list[dict]:
    path = os.path.join(folder, "eval", f"{name}.predictions.jsonl")
    return [json.loads(line) for line in read_text(path).splitlines() if line.strip()]


def run_values(bench, run_dir: str, shared: str, n_splits: int, model: str = "unlearned") -> dict:
    """{set: {metric: [(person, value), ...]}} of a run's evaluation (or, model="vanilla", of its vanilla model's),
    every forget split's questions in split order."""
    out: dict[str, dict[str, list]] = {}
    for k in range(n_splits):
        folder = split_dir(run_dir if model == "unlearned" else shared, k)
        by_set: dict[str, list] = {}
        for r in _predictions(folder, model):
            by_set.setdefault(r["set"], []).append(r)
        for s, recs in by_set.items():
            for m, pairs in bench.question_values(recs).items():
                out.setdefault(s, {}).setdefault(m, []).extend((str(p), float(v)) for p, v in pairs)
    return out


def floor_values(shared: str, n_splits: int) -> list[tuple[str, float]]:
    """The identity-free floor's per-question (person, value) pairs over the forget splits ([] without them)."""
    out = []
    for k in range(n_splits):
        cached = read_json_if_exists(os.path.join(split_dir(shared, k), "eval", "identity_free_floor.json"))
        if not cached or not cached.get("values"):
            return []
        out += [(str(p), float(v)) for p, v in cached["values"]]
    return out


def _per_person(pairs: list, people: list[str]) -> np.ndarray:
    """Sum of the values per person, in `people` order."""
    index = {p: i for i, p in enumerate(people)}
    sums = np.zeros(len(people))
    for p, v in pairs:
        sums[index[p]] += v
    return sums


def _counts(pairs: list, people: list[str]) -> np.ndarray:
    return _per_person([(p, 1.0) for p, _ in pairs], people)


def _draws(k: int, name: str, n_boot: int) -> np.ndarray:
    """Bootstrap weights over k people (row 0: the data itself), seeded by the name (stable across processes)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    w = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(np.float64)
    return np.concatenate([np.ones((1, k)), w])


def paired_columns(bench, a: dict, b: dict, vanilla: dict, floor: list, tag: str = "",
                   n_boot: int = N_BOOT) -> list[dict]:
    """Per headline column: goodness(a) - goodness(b) (the estimate and its 95% interval), from question values
    {set: {metric: [(person, value)]}} of runs a and b and of their vanilla model, and the floor's pairs."""
    out = []
    for set_name, metric, label, direction in bench.headline:
        pa, pb = a.get(set_name, {}).get(metric), b.get(set_name, {}).get(metric)
        if not pa or not pb:
            continue
        if [p for p, _ in pa] != [p for p, _ in pb]:
            raise NotPaired(f"{label}: the two runs scored different questions")
        people = sorted({p for p, _ in pa})
        counts = _counts(pa, people)
        w = _draws(len(people), f"paired/{tag}/{label}", n_boot)

        def mean(pairs, w=w, people=people, counts=counts):
            return (w @ _per_person(pairs, people)) / (w @ counts)

        ma, mb = mean(pa), mean(pb)
        if direction == "up":
            ga, gb = ma, mb
        elif direction == "keep":
            mv = mean(vanilla[set_name][metric])
            ga, gb = -np.abs(ma - mv), -np.abs(mb - mv)
        elif floor and metric == bench.relearn_metric and set_name == "forget":
            f = _weighted_floor(floor, people, w)
            ga, gb = -np.abs(ma - f), -np.abs(mb - f)
        else:
            ga, gb = -np.maximum(ma, bench.chance), -np.maximum(mb, bench.chance)
        d = ga - gb
        lo, hi = np.percentile(d[1:], [2.5, 97.5])
        out.append({"label": label, "direction": direction, "a": float(ma[0]), "b": float(mb[0]),
                    "diff": float(d[0]), "ci95": [float(lo), float(hi)]})
    return out


def _weighted_floor(floor: list, people: list[str], w: np.ndarray) -> np.ndarray:
    known = set(people)
    pairs = [(p, v) for p, v in floor if p in known]
    if len(pairs) != len(floor):
        raise NotPaired("the identity-free floor was scored on other people than the forget set")
    return (w @ _per_person(pairs, people)) / (w @ _counts(pairs, people))


def verdict(cols: list[dict]) -> str:
    better = [c["label"] for c in cols if c["ci95"][0] > 0]
    worse = [c["label"] for c in cols if c["ci95"][1] < 0]
    if better and not worse:
        return "better"
    if worse and not better:
        return "worse"
    return "mixed" if better else "undecided"


def _n_splits(run_dir: str) -> int:
    res = read_json_if_exists(os.path.join(run_dir, "results.json")) or {}
    return max(1, len(res.get("splits") or []))


def compare_runs(bench, run_a: str, run_b: str, shared: str, tag: str = "") -> dict:
    """Run a against run b (both of one pipeline seed, `shared` its folder): the columns and the verdict."""
    n = _n_splits(run_a)
    if _n_splits(run_b) != n:
        raise NotPaired(f"{run_a} and {run_b} have different numbers of forget splits")
    a, b = run_values(bench, run_a, shared, n), run_values(bench, run_b, shared, n)
    cols = paired_columns(bench, a, b, run_values(bench, run_a, shared, n, "vanilla"), floor_values(shared, n), tag)
    return {"columns": cols, "verdict": verdict(cols)}


def _fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.1f}" if abs(x) >= 0.05 or x == 0 \
        else f"{x:+.3f}"


def paired_markdown(results: dict[str, dict[int, dict]], reference: str) -> list[str]:
    """{other run: {pipeline seed: compare_runs(reference, other)}} -> the comparison's section."""
    if not results:
        return []
    labels = [c["label"] for r in results.values() for x in r.values() for c in x["columns"]]
    labels = list(dict.fromkeys(labels))
    lines = ["", f"## {reference} against each run, paired by question (per pipeline seed)", "",
             f"Each cell: goodness({reference}) - goodness(run) and its 95% interval, a bootstrap over people drawing "
             "the same people for both (points; ROUGE-L in [0, 1]). Goodness: minus the distance to the identity-"
             "free floor for forget VQA (minus max(value, chance) for another column to lower), minus the distance "
             "to vanilla for a column to keep, the value for a column to raise. Positive: "
             f"{reference} is better. Verdict: better / worse when some interval excludes 0 one way and none the "
             "other, mixed when both, undecided when none.", "",
             "| run | seed | " + " | ".join(labels) + " | verdict |", "|---|---|" + "---|" * (len(labels) + 1)]
    for name, per_seed in results.items():
        for seed, r in sorted(per_seed.items()):
            by = {c["label"]: c for c in r["columns"]}
            cells = [f"{_fmt(by[lab]['diff'])} [{_fmt(by[lab]['ci95'][0])}, {_fmt(by[lab]['ci95'][1])}]"
                     if lab in by else "-" for lab in labels]
            lines.append(f"| {name} | {seed} | " + " | ".join(cells) + f" | {r['verdict']} |")
    lines += ["", f"Verdicts over the seeds ({reference} against the run):", ""]
    for name, per_seed in results.items():
        counts: dict[str, int] = {}
        for r in per_seed.values():
            counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
        lines.append(f"- {name}: " + ", ".join(f"{v} on {n} of {len(per_seed)}" for v, n in counts.items()) + ".")
    return lines


def paired_against(bench, reference: str, units: list[tuple[str, dict[str, str], str]]) -> dict[str, dict]:
    """`reference` against every other run of each unit: units are (label, {run name: run folder}, shared folder)
    (one pipeline seed, or one pipeline x unlearning seed). {other run: {label: compare_runs(...)}}."""
    out: dict[str, dict] = {}
    for label, dirs, shared in units:
        if reference not in dirs:
            continue
        for name, run_dir in dirs.items():
            if name == reference:
                continue
            try:
                out.setdefault(name, {})[label] = compare_runs(bench, dirs[reference], run_dir, shared,
                                                               f"{name}/{label}")
            except NotPaired as e:
                out[name][label] = {"columns": [], "verdict": f"not paired ({e})"}
    return out
