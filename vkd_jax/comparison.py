"""The comparison of methods over pipeline seeds (vkd_jax.reproduce): mean ± std per column over pipeline seeds
(each the mean over its unlearning seeds), 95% intervals by a bootstrap over (pipeline seed x split) units, the
targets judged per pipeline seed, and the plots (the paired trade-off against VKD: vkd_jax.tradeoff). Chance
and the headline columns are the benchmark's (`Benchmark.chance`, `Benchmark.headline`).
"""

from __future__ import annotations

import math

from vkd_jax.report import benchmark_of, fmt


def _mean_std(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return m, sd


def pipeline_seed_of(r: dict) -> int:
    return int((r.get("config") or {}).get("seed", 0))


def _nested(rs: list[dict], get) -> tuple:
    """(mean, std) over pipeline seeds of each pipeline seed's mean over its unlearning seeds, and the mean
    within-pipeline std (None with one unlearning seed per pipeline seed)."""
    groups: dict[int, list] = {}
    for r in rs:
        groups.setdefault(pipeline_seed_of(r), []).append(get(r))
    means = [_mean_std(g)[0] for g in groups.values()]
    within = [_mean_std(g)[1] for g in groups.values() if len([x for x in g if x is not None]) > 1]
    return _mean_std(means), (sum(within) / len(within) if within else None)


def columns(headline, rs: list[dict], model: str = "unlearned") -> list:
    """(label, value of one results.json) for the table: the headline, and (unlearned) cost, AG per relearning
    fraction, and the probe's identity accuracies."""
    cols = [(label, lambda r, s=s, m=m: ((r[model].get(s) or {}).get(m))) for s, m, label, _ in headline]
    if model == "unlearned":
        cols.append(("seconds", lambda r: r["efficiency"]["unlearn_seconds"]))
        rl = next((r["relearn"] for r in rs if r.get("relearn")), None)
        for i, f in enumerate(rl["fractions"] if rl else ()):
            cols.append((f"AG@{f:g}", lambda r, i=i: r["relearn"]["ag"][i] if r.get("relearn") else None))
    if any(r.get("probe") for r in rs):
        for who in ("forget", "retain"):
            cols.append((f"Probe {who}", lambda r, w=who: ((r.get("probe") or {}).get(model) or {}).get(f"{w}_acc")))
    return cols


def split_runs(r: dict) -> list[dict]:
    """One results-shaped dict per forget split of a run (the run itself when it has one split)."""
    sp = r.get("splits") or []
    if len(sp) <= 1:
        return [r]
    return [{**r, "vanilla": s["vanilla"], "unlearned": s["unlearned"], "relearn": s.get("relearn"),
             "probe": s.get("probe")} for s in sp]


def unit_ci(rs: list[dict], get, name: str = "") -> list | None:
    """95% interval of the mean over units (pipeline seed x unlearning seed x forget split), units resampled."""
    from vkd_jax.eval.intervals import cluster_ci

    vals = [get(u) for r in rs for u in split_runs(r)]
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return list(cluster_ci(range(len(vals)), vals, name)) if len(vals) > 1 else None


def summarise(runs: dict[str, list[dict]]) -> dict:
    """{name: [results of every run]} -> {name: {label: (mean, std)}}: mean ± std over pipeline seeds (each the
    mean over its unlearning seeds); `within` holds the unlearning seeds' std where a pipeline seed has several."""
    out = {}
    headline = benchmark_of(next(iter(runs.values()))[0]).headline if runs else ()
    for name, rs in runs.items():
        row, within, ci = {}, {}, {}
        for label, get in columns(headline, rs):
            row[label], w = _nested(rs, get)
            ci[label] = unit_ci(rs, get, label)
            if w is not None:
                within[label] = w
        row["ci"] = ci
        row["trainable"] = (rs[0]["efficiency"]["trainable_params"], 0.0)
        row["n_pipeline"] = len({pipeline_seed_of(r) for r in rs})
        row["n_runs"] = len(rs)
        if within:
            row["within"] = within
        out[name] = row
    return out


def summarise_vanilla(runs: dict[str, list[dict]]) -> dict:
    """The vanilla models' row: mean ± std over pipeline seeds (one vanilla model each)."""
    per_seed = {}
    for rs in runs.values():
        for r in rs:
            per_seed.setdefault(pipeline_seed_of(r), r)
    rs = list(per_seed.values())
    if not rs:
        return {}
    cols = columns(benchmark_of(rs[0]).headline, rs, "vanilla")
    row = {label: _nested(rs, get)[0] for label, get in cols}
    row["ci"] = {label: unit_ci(rs, get, label) for label, get in cols}
    row["floor"] = _nested(rs, lambda r: (r.get("floors") or {}).get("identity_free_forget_vqa_cls_acc"))[0]
    return row


def _cell(ms, digits: int = 1, ci=None):
    m, sd = ms
    if m is None:
        return "-"
    return f"{fmt(m, digits)} ± {fmt(sd, digits)}" + (f" [{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]" if ci else "")


def _digits(headline) -> dict:
    """label -> decimals: ROUGE in [0, 1] gets 3, accuracies in % get 1."""
    return {h[2]: 3 if "rouge" in h[1].lower() else 1 for h in headline}


def _directions(headline) -> str:
    words = {"down": "lower is better", "keep": "should equal vanilla", "up": "higher is better"}
    return "; ".join(f"{', '.join(h[2] for h in headline if h[3] == d)}: {w}" for d, w in words.items()
                     if any(h[3] == d for h in headline))


def _targets_table(runs: dict[str, list[dict]], names) -> list[str]:
    """Per run name and target: its verdict by interval on each pipeline seed (the benchmark's judged targets)."""
    import re

    first = next(iter(runs.values()))[0]
    bench = benchmark_of(first)
    heads = [re.sub(r" \(-?[0-9.]+\)", "", t[0]) for t in bench.judged_targets(first)]
    if not heads:
        return []
    letter = {"met": "M", "not met": "N", "undecided": "U"}
    lines = ["", "## Targets on every pipeline seed, judged by the interval", "",
             "Each cell: the verdict on each pipeline seed in seed order (of each seed's runs in order): M met (the "
             "95% interval inside the target), N not met (outside), U undecided (it straddles the bound), - not "
             "measured. " + bench.targets_legend, "",
             "| run | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for name in names:
        if name not in runs:
            continue
        rs = sorted(runs[name], key=pipeline_seed_of)
        judged = [{re.sub(r" \(-?[0-9.]+\)", "", t[0]): t[3] for t in bench.judged_targets(r)} for r in rs]
        cells = ["".join(letter.get(j.get(h), "-") for j in judged) for h in heads]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def comparison_markdown(vanilla: dict, summary: dict, seeds, methods, ablations, headline,
                        runs: dict | None = None, unlearn_seeds=None, *, chance: float) -> str:
    labels = [h[2] for h in headline]
    n_runs = max((r.get("n_runs", 0) for r in summary.values()), default=0)
    nested = (f"; under each, unlearning seeds {', '.join(map(str, unlearn_seeds))} (their mean per pipeline "
              "seed)") if unlearn_seeds else ""
    lines = ["# Method comparison", "",
             f"Mean ± std over pipeline seeds {', '.join(map(str, seeds))} (each trains its own vanilla model from "
             f"the same benchmark world, then runs every method){nested}; {n_runs} run(s) per row; in brackets the "
             "95% interval of the mean, a bootstrap over the runs' forget splits (pipeline seed x split). "
             "Accuracy in % "
             f"(multiple choice, chance {chance:g}), ROUGE-L in [0, 1]. {_directions(headline)}.",
             "", "## Main table", "", "| method | " + " | ".join(labels) + " | unlearn s | trainable params |",
             "|---|" + "---|" * (len(labels) + 2)]
    dg = _digits(headline)
    lines.append("| vanilla | " + " | ".join(_cell(vanilla.get(lab, (None, None)), dg[lab],
                                                   (vanilla.get("ci") or {}).get(lab)) for lab in labels)
                 + " | - | - |")

    def row(name):
        r = summary[name]
        return (f"| {name} | " + " | ".join(_cell(r[lab], dg[lab], r.get("ci", {}).get(lab)) for lab in labels)
                + f" | {_cell(r['seconds'])} | "
                f"{r['trainable'][0]:,} |")

    lines += [row(m) for m in methods if m in summary]
    if vanilla.get("floor") and vanilla["floor"][0] is not None:
        lines += ["", f"Identity-free floor of forget VQA (the vanilla model shown the mean image): "
                      f"{_cell(vanilla['floor'])}."]
    if ablations:
        lines += ["", "## VKD ablations", "", "| variant | " + " | ".join(labels) + " | unlearn s | trainable params |",
                  "|---|" + "---|" * (len(labels) + 2)]
        lines += [row(a) for a in ablations if a in summary]
    names = [n for n in list(methods) + list(ablations) if n in summary]
    ag_cols = sorted({k for r in summary.values() for k in r if k.startswith("AG@")}, key=lambda k: float(k[3:]))
    if ag_cols:
        lines += ["", "## Relearning attack (AG, points: forget VQA after relearning - after unlearning)", "",
                  "| run | " + " | ".join(ag_cols) + " |", "|---|" + "---|" * len(ag_cols)]
        lines += [f"| {n} | " + " | ".join(_cell(summary[n].get(c, (None, None)), 1, summary[n].get("ci", {}).get(c))
                                           for c in ag_cols) + " |"
                  for n in names]
    if any("Probe forget" in summary[n] for n in names):
        lines += ["", "## Representation probe (identity accuracy in % of a linear probe on the visual features, "
                  "held-out images)", "", "| run | forget people | retain people |", "|---|---|---|",
                  f"| vanilla | {_cell(vanilla.get('Probe forget', (None, None)))} | "
                  f"{_cell(vanilla.get('Probe retain', (None, None)))} |"]
        lines += [f"| {n} | {_cell(summary[n].get('Probe forget', (None, None)))} | "
                  f"{_cell(summary[n].get('Probe retain', (None, None)))} |" for n in names]
    if any(summary[n].get("within") for n in names):
        lines += ["", "## Spread over unlearning seeds (std within a pipeline seed, mean over pipeline seeds)", "",
                  "| run | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        lines += [f"| {n} | " + " | ".join(fmt(summary[n].get("within", {}).get(lab), dg[lab]) for lab in labels) + " |"
                  for n in names]
    if runs:
        lines += _targets_table(runs, names)
    return "\n".join(lines) + "\n"


def plot_methods(summary: dict, vanilla: dict, path: str, headline, runs: dict | None = None,
                 *, chance: float):
    """Forget VQA vs retain VQA: each run a small point, each row's mean ± std over pipeline seeds a marker."""
    from vkd_jax.report import pyplot, save_fig

    plt = pyplot()
    where = {label: (s, m) for s, m, label, _ in headline}

    def xy(res):
        return tuple((res.get(where[lab][0]) or {}).get(where[lab][1]) for lab in ("Forget VQA", "Retain VQA"))

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, (name, r) in enumerate(summary.items()):
        color = f"C{i % 10}"
        for res in (runs or {}).get(name, ()):
            p = xy(res["unlearned"])
            if None not in p:
                ax.plot(*p, ".", color=color, alpha=0.45, ms=5)
        x, y = r["Forget VQA"][0], r["Retain VQA"][0]
        if x is None or y is None:
            continue
        ax.errorbar(x, y, xerr=r["Forget VQA"][1], yerr=r["Retain VQA"][1], fmt="o", capsize=3, color=color)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    seen = set()
    for rs in (runs or {}).values():
        for res in rs:
            if pipeline_seed_of(res) not in seen and None not in xy(res["vanilla"]):
                seen.add(pipeline_seed_of(res))
                ax.plot(*xy(res["vanilla"]), "k*", ms=6, alpha=0.45)
    v = (vanilla.get("Forget VQA", (None,))[0], vanilla.get("Retain VQA", (None,))[0])
    if None not in v:
        ax.plot(*v, "k*", ms=12, label="vanilla (mean; small: each pipeline seed)")
    ax.axvline(chance, color="grey", ls="--", lw=1, label="chance")
    ax.set_xlabel("forget VQA accuracy (%)  (lower is better)")
    ax.set_ylabel("retain VQA accuracy (%)  (higher is better)")
    ax.set_title("forgetting vs keeping (dots: single runs; markers: mean ± std over pipeline seeds)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_fig(fig, path)


def plot_relearn(runs: dict[str, list[dict]], path: str, *, chance: float):
    """Held-out forget VQA after relearning per fraction: each run a thin line, each row's mean a thick one."""
    from vkd_jax.report import pyplot, save_fig

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    drawn = False
    for i, (name, rs) in enumerate(runs.items()):
        rr = [r["relearn"] for r in rs if r.get("relearn")]
        if not rr:
            continue
        color = f"C{i % 10}"
        fr = rr[0]["fractions"]
        for x in rr:
            ax.plot(fr, x["forget_vqa_cls_acc"], "-", color=color, alpha=0.3, lw=0.8)
        ys = [_mean_std([x["forget_vqa_cls_acc"][j] for x in rr])[0] for j in range(len(fr))]
        ax.plot(fr, ys, "o-", label=name, color=color, lw=2)
        drawn = True
    ax.axhline(chance, color="grey", ls="--", lw=1)
    ax.set_xlabel("fraction of forget questions relearnt")
    ax.set_ylabel("held-out forget VQA accuracy after relearning (%)")
    ax.set_title("relearning attack (thin: single runs; thick: mean)", fontsize=9)
    if drawn:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_fig(fig, path)
