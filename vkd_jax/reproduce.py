"""Every method (and VKD's ablations) from the same vanilla model, over several seeds, in one comparison table.

  python -m vkd_jax.reproduce --config configs/tiny.py --methods all --seeds 0,1,2 --workdir W [--ablations]

W/shared holds the benchmark and the vanilla model (trained once, with the first seed, and reused by every run);
W/runs/<name>_s<seed>/ holds each run's masks, unlearning, evaluation, relearning and report. Finished runs are
reused on a rerun. Writes W/comparison.md, W/comparison.json and W/plots/{methods,relearn_methods}.png. W may be
a gs:// URI (see vkd_jax.experiment; --local_cache says where the benchmark is built then).
"""

from __future__ import annotations

import json
import math
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vkd_jax.io_utils import atomic_write_text, makedirs, read_json_if_exists, read_text, resolve
from vkd_jax.report import HEADLINE, fmt

METHODS = ("vkd", "ga", "gd", "kl", "npo", "idk", "mmunlearner")

def ablations_for(cfg) -> dict:
    """name -> (method, config overrides): each switches one of VKD's choices away from the config's own default
    (a switch that is already off is turned on instead), everything else as the default."""
    v = cfg.vkd
    masks = bool(cfg.stages.unlearn.get("use_masks", False))
    out = {"vkd-no-distill": ("vkd", {"vkd.b_r": 0.0, "vkd.b_g": 0.0})}
    if float(v.get("b_g", 0.0)) > 0:
        out["vkd-no-generic"] = ("vkd", {"vkd.b_g": 0.0})
    if float(v.get("b_r", 0.0)) > 0:
        out["vkd-no-retain-distill"] = ("vkd", {"vkd.b_r": 0.0})
    out["vkd-no-mask" if masks else "vkd-with-mask"] = ("vkd", {"stages.unlearn.use_masks": not masks})
    part = cfg.method_partition.vkd
    for preset, name in (("projector", "vkd-projector-only"), ("visual_last_k", "vkd-last-vit-block"),
                         ("visual", "vkd-whole-visual-side")):
        if preset != part:
            out[name] = ("vkd", {"method_partition.vkd": preset})
    for taps, name in ((("vision:-1",), "vkd-tap-vision"), (("llm:1",), "vkd-tap-llm"),
                       (("projector",), "vkd-tap-projector")):
        if tuple(v.taps) != taps:
            out[name] = ("vkd", {"vkd.taps": taps})
    return out


def define_flags() -> None:
    """The CLI's flags (defined only when it runs: this module is also a library)."""
    config_flags.DEFINE_config_file("config", None, "ml_collections config file (path[:variant])",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "work directory")
    flags.DEFINE_string("methods", "all", "comma-separated methods, or 'all'")
    flags.DEFINE_string("seeds", "0,1,2", "comma-separated seeds")
    flags.DEFINE_bool("ablations", True, "also run VKD's ablations")
    flags.DEFINE_bool("relearn", True, "run the relearning attack for every run")
    flags.DEFINE_string("local_cache", None, "local folder for the benchmark when --workdir is a URI "
                        "(default $VKD_JAX_CACHE or ~/.cache/vkd_jax)")
    flags.mark_flags_as_required(["config", "workdir"])


def apply_overrides(cfg, overrides: dict):
    import ml_collections

    c = ml_collections.ConfigDict(cfg.to_dict())
    for dotted, value in overrides.items():
        node = c
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def _mean_std(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return m, sd


def summarise(runs: dict[str, list[dict]]) -> dict:
    """{name: [results per seed]} -> {name: {label: (mean, std)}} for the headline columns, cost and AG."""
    out = {}
    for name, rs in runs.items():
        row = {}
        for s, m, label, _ in HEADLINE:
            row[label] = _mean_std([(r["unlearned"].get(s) or {}).get(m) for r in rs])
        row["seconds"] = _mean_std([r["efficiency"]["unlearn_seconds"] for r in rs])
        row["trainable"] = (rs[0]["efficiency"]["trainable_params"], 0.0)
        ags = [r["relearn"]["ag"] for r in rs if r.get("relearn")]
        if ags:
            for i, f in enumerate(rs[0]["relearn"]["fractions"]):
                row[f"AG@{f:g}"] = _mean_std([a[i] for a in ags])
        out[name] = row
    return out


def _cell(ms):
    m, sd = ms
    return "-" if m is None else f"{fmt(m)} ± {fmt(sd)}"


def comparison_markdown(vanilla: dict, summary: dict, seeds, methods, ablations) -> str:
    labels = [h[2] for h in HEADLINE]
    lines = ["# Method comparison", "",
             f"Mean ± std over seeds {', '.join(map(str, seeds))}; classification accuracy in % (chance 25). "
             "Forget/Test VQA: lower is better; Forget QA should equal vanilla; Retain/Celeb: higher is better.",
             "", "## Main table", "", "| method | " + " | ".join(labels) + " | unlearn s | trainable params |",
             "|---|" + "---|" * (len(labels) + 2)]
    lines.append("| vanilla | " + " | ".join(fmt((vanilla.get(s) or {}).get(m)) for s, m, _, _ in HEADLINE)
                 + " | - | - |")

    def row(name):
        r = summary[name]
        return (f"| {name} | " + " | ".join(_cell(r[lab]) for lab in labels) + f" | {_cell(r['seconds'])} | "
                f"{r['trainable'][0]:,} |")

    lines += [row(m) for m in methods if m in summary]
    if ablations:
        lines += ["", "## VKD ablations", "", "| variant | " + " | ".join(labels) + " | unlearn s | trainable params |",
                  "|---|" + "---|" * (len(labels) + 2)]
        lines += [row(a) for a in ablations if a in summary]
    if "vkd" in summary:
        verdicts = [tradeoff_line(vanilla, summary, m) for m in methods if m != "vkd" and m in summary]
        if verdicts:
            lines += ["", "## Trade-off against VKD", "",
                      "Per headline column, by the means; a difference within the larger std (or 1 point) is a "
                      "tie. Forget QA: closer to vanilla is better; Forget/Test VQA: lower is better down to chance "
                      "(25), below it counts as chance. Where VKD loses, the ablations above show which of its "
                      "choices moves that column.", ""] + verdicts
    ag_cols = sorted({k for r in summary.values() for k in r if k.startswith("AG@")},
                     key=lambda k: float(k[3:]))
    if ag_cols:
        lines += ["", "## Relearning attack (AG, points: forget VQA after relearning - after unlearning)", "",
                  "| run | " + " | ".join(ag_cols) + " |", "|---|" + "---|" * len(ag_cols)]
        for name in list(methods) + list(ablations):
            if name in summary:
                lines.append(f"| {name} | " + " | ".join(_cell(summary[name].get(c, (None, None)))
                                                         for c in ag_cols) + " |")
    return "\n".join(lines) + "\n"


def tradeoff_line(vanilla: dict, summary: dict, method: str, chance: float = 25.0) -> str:
    """One line: where VKD's means beat, tie with or lose to `method`'s, and whether VKD's trade-off beats it."""
    v, b = summary["vkd"], summary[method]
    wins, losses = [], []
    for s, m, label, direction in HEADLINE:
        (a, sa), (c, sc) = v[label], b[label]
        if a is None or c is None:
            continue
        if direction == "keep":
            ref = (vanilla.get(s) or {}).get(m)
            if ref is None:
                continue
            a, c = -abs(a - ref), -abs(c - ref)
        elif direction == "down":  # forgetting aims at chance: below it is no better (it leaks the answer)
            a, c = -max(a, chance), -max(c, chance)
        if abs(a - c) <= max(sa or 0.0, sc or 0.0, 1.0):
            continue
        shown = f"{label} {fmt(v[label][0])} vs {fmt(b[label][0])}"
        (wins if a > c else losses).append(shown)
    if not losses:
        verdict = f"VKD beats {method}'s trade-off" + (f" (better on {'; '.join(wins)})" if wins else " (all ties)")
    else:
        verdict = (f"VKD does not beat {method}'s trade-off: worse on {'; '.join(losses)}"
                   + (f"; better on {'; '.join(wins)}" if wins else ""))
    fv = b["Forget VQA"][0]
    if fv is not None and fv < chance - 5:
        verdict += (f". {method}'s Forget VQA is below chance ({chance:g}): it avoids the true option, which gives "
                    "the answer away")
    return f"- {verdict}."


def plot_methods(summary: dict, vanilla: dict, path: str):
    from vkd_jax.report import pyplot, save_fig

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, r in summary.items():
        x, y = r["Forget VQA"][0], r["Retain VQA"][0]
        if x is None or y is None:
            continue
        ax.errorbar(x, y, xerr=r["Forget VQA"][1], yerr=r["Retain VQA"][1], fmt="o", capsize=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    v = (vanilla.get("forget") or {}).get("vqa_cls_acc"), (vanilla.get("retain") or {}).get("vqa_cls_acc")
    if None not in v:
        ax.plot(*v, "k*", ms=12, label="vanilla")
    ax.axvline(25, color="grey", ls="--", lw=1, label="chance")
    ax.set_xlabel("forget VQA accuracy (%)  (lower is better)")
    ax.set_ylabel("retain VQA accuracy (%)  (higher is better)")
    ax.set_title("forgetting vs keeping")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_fig(fig, path)


def plot_relearn(runs: dict[str, list[dict]], path: str):
    from vkd_jax.report import pyplot, save_fig

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    drawn = False
    for name, rs in runs.items():
        rr = [r["relearn"] for r in rs if r.get("relearn")]
        if not rr:
            continue
        fr = rr[0]["fractions"]
        ys = [_mean_std([x["forget_vqa_cls_acc"][i] for x in rr])[0] for i in range(len(fr))]
        ax.plot(fr, ys, "o-", label=name)
        drawn = True
    ax.axhline(25, color="grey", ls="--", lw=1)
    ax.set_xlabel("fraction of forget questions relearnt")
    ax.set_ylabel("held-out forget VQA accuracy after relearning (%)")
    ax.set_title("relearning attack")
    if drawn:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_fig(fig, path)


def reproduce(cfg, workdir: str, methods, seeds, ablations, relearn: bool = True,
              local_cache: str | None = None) -> dict:
    import jax

    from vkd_jax import experiment

    shared = os.path.join(workdir, "shared")
    table = ablations_for(cfg) if ablations else {}
    unknown = [a for a in ablations if a not in table]
    if unknown:
        raise ValueError(f"unknown ablations {unknown}; for this config: {sorted(table)}")
    plan = [(m, m, {}) for m in methods] + [(a, *table[a]) for a in ablations]
    from vkd_jax.config_check import validate
    for seed in seeds:  # every config that will run, before the first one starts
        for name, method, overrides in plan:
            if read_json_if_exists(os.path.join(workdir, "runs", f"{name}_s{seed}", "results.json")) is None:
                validate(apply_overrides(cfg, {"seed": seed, "method": method, **overrides}))
    runs: dict[str, list[dict]] = {}
    vanilla = None
    for seed in seeds:
        for name, method, overrides in plan:
            run_dir = os.path.join(workdir, "runs", f"{name}_s{seed}")
            c = apply_overrides(cfg, {"seed": seed, "method": method, **overrides})
            res = read_json_if_exists(os.path.join(run_dir, "results.json"))
            if res is None:
                logging.warning("run %s seed %d", name, seed)
                res = experiment.run(c, run_dir, shared=shared, relearn=relearn, local_cache=local_cache)
            runs.setdefault(name, []).append(res)
            vanilla = vanilla or res["vanilla"]
    summary = summarise(runs)
    if jax.process_index() == 0:
        makedirs(os.path.join(workdir, "plots"))
        atomic_write_text(os.path.join(workdir, "comparison.json"),
                          json.dumps({"seeds": list(seeds), "vanilla": vanilla, "summary": summary}, indent=2))
        atomic_write_text(os.path.join(workdir, "comparison.md"),
                          comparison_markdown(vanilla, summary, seeds, methods, ablations))
        plot_methods(summary, vanilla, os.path.join(workdir, "plots", "methods.png"))
        plot_relearn(runs, os.path.join(workdir, "plots", "relearn_methods.png"))
    return summary


def main(argv):
    del argv
    a = flags.FLAGS
    logging.set_verbosity(logging.WARNING)
    methods = METHODS if a.methods == "all" else tuple(m.strip() for m in a.methods.split(","))
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise app.UsageError(f"--methods: unknown {sorted(unknown)}; known: {', '.join(METHODS)}")
    try:
        seeds = tuple(int(s) for s in a.seeds.split(","))
    except ValueError:
        raise app.UsageError(f"--seeds={a.seeds!r}: expected comma-separated integers") from None
    ablations = tuple(ablations_for(a.config)) if a.ablations else ()
    workdir = resolve(a.workdir)
    from vkd_jax.cli import EXPECTED_ERRORS
    try:
        reproduce(a.config, workdir, methods, seeds, ablations, relearn=a.relearn, local_cache=a.local_cache)
    except EXPECTED_ERRORS as e:  # bad config / data / weights: one clear line, non-zero exit
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(read_text(os.path.join(workdir, "comparison.md")))


if __name__ == "__main__":
    define_flags()
    app.run(main)
