"""The paper's claims, point by point, measured on a reproduction (vkd_jax.reproduce's work directory).

  python bench/claims.py --workdir W [--reference vkd] [--write W/claims.md]

Reads W/comparison.json (written by reproduce / bench/robustness.py) and the runs' prediction files:
1. text knowledge kept exactly: the text-only (QA) records of every run against its vanilla model's, field by field
   (every option score compared as the float the evaluation wrote);
2. the trade-off against every baseline: the paired verdicts per pipeline seed (vkd_jax.tradeoff);
3. relearning robustness: AG per fraction with its interval (the paper: 1.3 points on average);
4. beyond the paper, the probe: identity accuracy of the visual features on the forget and retain people.
Unlearning time is not read from the runs (their seconds include compilation and whatever shared the machine):
bench/step.py measures it side by side.
"""

from __future__ import annotations

import glob
import json
import os
import sys

from absl import app, flags

PAPER_MEAN_AG = 1.3  # the paper's average relearning gain for VKD, points


def text_records_identical(run_dir: str, shared: str) -> tuple[int, int]:
    """(text-only records equal to the vanilla model's in every field, text-only records) over the run's splits."""
    from vkd_jax.io_utils import read_text
    from vkd_jax.workdir import split_dir

    def load(folder, name):
        path = os.path.join(folder, "eval", f"{name}.predictions.jsonl")
        return [json.loads(line) for line in read_text(path).splitlines() if line.strip()]

    n_splits = max(1, len(json.loads(read_text(os.path.join(run_dir, "results.json"))).get("splits") or []))
    same = total = 0
    for k in range(n_splits):
        u, v = load(split_dir(run_dir, k), "unlearned"), load(split_dir(shared, k), "vanilla")
        if len(u) != len(v):
            raise ValueError(f"{run_dir} split {k}: {len(u)} records against the vanilla model's {len(v)}")
        for a, b in zip(u, v):
            if a["form"] == "QA":
                total += 1
                same += a == b
    return same, total


def _runs(workdir: str) -> dict[str, list[tuple[str, str, dict]]]:
    """{run name: [(run folder, shared folder, results)]} over the pipeline seeds (reproduce's layout, on a local
    disk)."""

    out: dict[str, list] = {}
    for path in sorted(glob.glob(os.path.join(workdir, "p*", "runs", "*_u*", "results.json"))):
        run_dir = os.path.dirname(path)
        name = os.path.basename(run_dir).rsplit("_u", 1)[0]
        shared = os.path.join(os.path.dirname(os.path.dirname(run_dir)), "shared")
        with open(path) as f:
            out.setdefault(name, []).append((run_dir, shared, json.load(f)))
    return out


def _ci(x) -> str:
    return f"[{x[0]:.1f}, {x[1]:.1f}]" if x else ""


def claims_markdown(workdir: str, reference: str) -> str:
    with open(os.path.join(workdir, "comparison.json")) as f:
        comp = json.load(f)
    runs = _runs(workdir)
    if reference not in runs:
        raise SystemExit(f"{workdir}: no finished run named {reference!r} (runs: {', '.join(sorted(runs))})")
    lines = [f"# The paper's claims, measured: {reference} ({workdir})", "",
             f"Pipeline seeds {', '.join(map(str, comp['pipeline_seeds']))}; 95% intervals as in comparison.md.", "",
             "## 1. Text knowledge kept exactly", "",
             "Text-only (QA) evaluation records equal to the vanilla model's in every field (answer, parsed letter, "
             "every option score as written), over every forget split and pipeline seed:", "",
             "| run | identical / text records |", "|---|---|"]
    for name, rs in runs.items():
        same = total = 0
        for run_dir, shared, _ in rs:
            s, t = text_records_identical(run_dir, shared)
            same, total = same + s, total + t
        lines.append(f"| {name} | {same} / {total} |")
    paired = (comp.get("paired") or {}).get("runs") or {}
    lines += ["", f"## 2. The trade-off against every baseline (paired by question, {reference} minus the run)", ""]
    if not paired:
        lines.append(f"No paired comparison in comparison.json (rerun reproduce with {reference} among the runs).")
    for name, per_seed in paired.items():
        verdicts = [f"seed {s}: {r['verdict']}" for s, r in sorted(per_seed.items())]
        lines.append(f"- {name}: " + "; ".join(verdicts) + ".")
    if paired:
        holds = all(r["verdict"] == "better" for per in paired.values() for r in per.values())
        lines += ["", f"Claim (better than every other run on every seed): {'holds' if holds else 'does not hold'} "
                      "here; the columns behind each verdict are in comparison.md."]
    s = comp["summary"][reference]
    ags = sorted((k for k in s if k.startswith("AG@")), key=lambda k: float(k[3:]))
    lines += ["", "## 3. Relearning robustness (AG, points)", ""]
    if ags:
        cells = [f"{k}: {s[k][0]:.1f} ± {s[k][1]:.1f} {_ci(s['ci'].get(k))}" for k in ags]
        mean_ag = sum(s[k][0] for k in ags) / len(ags)
        lines.append(f"{reference}: " + "; ".join(cells) + f". Mean over fractions {mean_ag:.1f} "
                     f"(the paper: {PAPER_MEAN_AG:g}).")
    else:
        lines.append("No relearning in these runs.")
    lines += ["", "## 4. Beyond the paper: is the forgetting in the representation? (linear identity probe)", "",
              "| run | forget people | retain people |", "|---|---|---|"]
    v = comp["vanilla"]
    if "Probe forget" in v:
        lines.append(f"| vanilla | {v['Probe forget'][0]:.1f} | {v['Probe retain'][0]:.1f} |")
    chance = [r[2]["probe"]["vanilla"].get("chance") for rs in runs.values() for r in rs if r[2].get("probe")]
    for name, row in comp["summary"].items():
        if "Probe forget" in row:
            lines.append(f"| {name} | {row['Probe forget'][0]:.1f} ± {row['Probe forget'][1]:.1f} | "
                         f"{row['Probe retain'][0]:.1f} ± {row['Probe retain'][1]:.1f} |")
    if chance:
        lines += ["", f"Probe chance: {chance[0]:.1f}%. The target: forget people at least halfway from vanilla "
                      "to chance, retain people within 5 of vanilla."]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    a = flags.FLAGS
    md = claims_markdown(a.workdir, a.reference)
    if a.write:
        from vkd_jax.io_utils import atomic_write_text

        atomic_write_text(a.write, md)
    sys.stdout.write(md)


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "reproduce's work directory (with comparison.json)")
    flags.DEFINE_string("reference", "vkd", "the run the claims are about")
    flags.DEFINE_string("write", None, "also write the markdown here")
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
