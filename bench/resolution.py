"""How many forget splits a run needs: the 95% interval half-width of each headline number against the number of
splits pooled, read from one finished run's per-split predictions (no model is run).

    python bench/resolution.py --workdir W [--out bench/resolution/mllmu.json]

W is a `vkd_jax.main` work directory run with `--config.splits=K`; the first k = 1..K splits are pooled as a run
with `splits=k` would pool them (vkd_jax.run_eval.pool_splits): the intervals are bootstraps over people.
"""

from __future__ import annotations

import argparse
import json
import os

from vkd_jax.benchmarks import benchmark_class
from vkd_jax.eval.intervals import half_width, with_intervals
from vkd_jax.experiment import read_eval_values, relearn_dir, split_dir


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    with open(os.path.join(a.workdir, "results.json")) as f:
        results = json.load(f)
    bench = benchmark_class(results["benchmark"])
    metric = bench.relearn_metric
    n = len(results.get("splits") or [1])
    sets = [s for s, m, _, d in bench.headline if m == metric]
    per_split = []
    for k in range(n):
        d = split_dir(a.workdir, k)
        rl = []
        rels = results.get("relearn", {})
        for frac, attacks in zip(rels.get("fractions", []), rels.get("attacks", [])):
            values = []
            for j in range(attacks):  # the fraction's attacks pooled, as the run pools them
                with open(os.path.join(relearn_dir(d, frac, j), "result.json")) as f:
                    values += json.load(f).get("ag_values", [])
            rl.append(values)
        per_split.append({"unlearned": read_eval_values(bench, d, "unlearned"), "relearn": rl})
    rows = []
    for k in range(1, n + 1):
        row = {"splits": k}
        for s in sets:
            pairs = [tuple(v) for sp in per_split[:k] for v in sp["unlearned"].get(s, {}).get(metric, [])]
            res = with_intervals({metric: pairs})
            row[s] = {"value": res[metric], "half_width": half_width(res[f"{metric}_ci95"]), "n": len(pairs)}
        for i, frac in enumerate(results.get("relearn", {}).get("fractions", [])):
            pairs = [tuple(v) for sp in per_split[:k] for v in sp["relearn"][i]]
            res = with_intervals({f"ag{i}": pairs})
            row[f"AG@{frac:g}"] = {"value": res[f"ag{i}"], "half_width": half_width(res[f"ag{i}_ci95"]),
                                   "n": len(pairs)}
        rows.append(row)
    cols = [c for c in rows[0] if c != "splits"]
    print("| splits | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for row in rows:
        print(f"| {row['splits']} | " + " | ".join(
            f"{row[c]['value']:.1f} ± {row[c]['half_width']:.1f} (n={row[c]['n']})" for c in cols) + " |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"workdir": os.path.abspath(a.workdir), "benchmark": results["benchmark"], "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
