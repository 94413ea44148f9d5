"""results.json -> report.md (tables as in the paper) and plots/*.png (forget vs retain per set, training curves,
relearning curve). Also the multi-run comparison table used by `vkd_jax.reproduce`. Paths may be gs:// URIs: files
go through `vkd_jax.io_utils` (plots are rendered in memory, then written atomically)."""

from __future__ import annotations

import io
import json
import math
import os

from vkd_jax.io_utils import as_path, atomic_write_bytes, atomic_write_text, makedirs


def benchmark_of(results: dict):
    """The benchmark class whose sets, headline and metrics a results.json holds (MLLMU-Bench when unnamed)."""
    from vkd_jax.benchmarks import benchmark_class

    return benchmark_class(results.get("benchmark", "mllmu"))


def _relearn_params(results: dict) -> str:
    """What the relearning attack trained, from the run's config (its partition preset)."""
    preset = ((((results.get("config") or {}).get("stages") or {}).get("relearn") or {}).get("partition")
              or "full")
    return "all params" if preset == "full" else f"the `{preset}` partition"


def fmt(v, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def _get(res: dict, s: str, m: str):
    return (res.get(s) or {}).get(m)


def fmt_ci(v, ci, digits: int = 1) -> str:
    """'v [lo, hi]' (the 95% interval), or v alone without one."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if not ci or ci[0] is None:
        return fmt(v, digits)
    return f"{fmt(v, digits)} [{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def cell(res: dict, s: str, m: str, digits: int = 1) -> str:
    return fmt_ci(_get(res, s, m), _get(res, s, f"{m}_ci95"), digits)


def splits_line(r: dict) -> str:
    sp = r.get("splits") or []
    if len(sp) <= 1:
        return ("One forget split. Each number has its 95% interval in brackets: a bootstrap over the people "
                "evaluated (one person's questions are not independent).")
    return (f"{len(sp)} disjoint forget splits, each unlearnt from the same vanilla model; every number pools their "
            "questions (per-split results: results.json `splits`), with its 95% interval in brackets: a bootstrap "
            "over the people evaluated (one person's questions are not independent; a retain person evaluated in "
            "several splits is one).")


def read_curve(stage_dir: str, key: str = "loss") -> tuple[list, list]:
    steps, vals = [], []
    path = as_path(os.path.join(stage_dir, "metrics.jsonl"))
    if not path.is_file():
        return steps, vals
    with path.open() as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "step" in rec and key in rec:
                steps.append(rec["step"])
                vals.append(rec[key])
    return steps, vals


def protocol_line(p: dict, benchmark: str = "mllmu", clear_reading: str = "followup") -> str:
    """One sentence on how the evaluation was scored (results.json "protocol")."""
    if not p:
        return "Evaluation protocol: not recorded."
    cls = {"generate": "the greedy reply's letter", "likelihood": "option likelihood"}.get(p.get("cls_scoring"), "?")
    sub = f"; the first {p['max_questions']} questions of each kind" if p.get("max_questions") else ""
    if benchmark == "clear":
        extra = (" The benchmark's own metrics (ROUGE-L recall, Prob, Truth Ratio, Model Utility) are under "
                 "`official`." if clear_reading == "official" else "")
        return ("Evaluation: CLEAR as the follow-up work reads it: VQA = the person's name as multiple choice among "
                f"the perturbed names (LLaVA-1.5 chat prompt), by {cls}; QA = ROUGE-L F of the greedy answer to each "
                f"text-only question, {p.get('max_new_tokens')} new tokens{sub}; real faces / real world as "
                "multiple choice." + extra + " Per-question predictions: `eval/<model>.predictions.jsonl`.")
    parse = {"official": "the official rule (first character, A-D only)",
             "lenient": "the lenient rule (first alphanumeric character)"}.get(p.get("cls_parse"), "?")
    pose = {"mean": "the mean over every pose of each profile", "random": "one random pose per profile and task "
            "(seeded; the official reading)"}.get(p.get("test_pose"), "?")
    fs = p.get("few_shot_profiles") or {}
    shots = (f"few-shot as the official script ({fs.get('classification')} demo profile(s) for classification, "
             f"{fs.get('cloze')} for cloze)") if p.get("few_shot") else "zero-shot"
    return (f"Evaluation: MLLMU-Bench's official prompts and answer extraction, greedy, {p.get('max_new_tokens')} new "
            f"tokens, {shots}{sub}; classification by {cls}" + (f", parsed by {parse}" if p.get("cls_scoring") ==
            "generate" else "") + f"; Test_Set scored as {pose}. Per-question predictions: "
            "`eval/<model>.predictions.jsonl`.")


def headline_lines(r: dict) -> list[str]:
    """The headline table (vanilla, unlearned, change, each with its 95% interval) and the splits it pools."""
    van, unl, headline = r["vanilla"], r["unlearned"], benchmark_of(r).headline
    lines = ["| model | " + " | ".join(h[2] for h in headline) + " |", "|---|" + "---|" * len(headline)]
    dg = {m: 3 if "rouge" in m.lower() else 1 for _, m, _, _ in headline}
    for name, res in (("vanilla", van), ("unlearned", unl)):
        lines.append(f"| {name} | " + " | ".join(cell(res, s, m, dg[m]) for s, m, _, _ in headline) + " |")
    ch = r.get("change") or {}
    lines.append("| change | " + " | ".join(cell(ch, s, m, dg[m]) if _get(ch, s, m) is not None else
        fmt(None if _get(unl, s, m) is None or _get(van, s, m) is None else _get(unl, s, m) - _get(van, s, m))
        for s, m, _, _ in headline) + " |")
    return lines + ["", splits_line(r)]


def targets_lines(r: dict) -> list[str]:
    judged = benchmark_of(r).judged_targets(r)
    if not judged:
        return []
    return ["", "## Targets, judged by the interval", "",
            "Met: the 95% interval lies inside the target; not met: outside it; undecided: it straddles the bound.",
            "", "| target | value [95% interval] | verdict |", "|---|---|---|"] + \
        [f"| {name} | {fmt_ci(v, ci)} | {verdict} |" for name, v, ci, verdict in judged]


def console_summary(r: dict) -> str:
    """What main prints when a run ends: the headline with intervals, relearning, the targets judged, the cost."""
    lines = [f"{r['method']} on {benchmark_of(r).name}: accuracies in % [95% interval]", ""] + headline_lines(r)
    rl = r.get("relearn")
    if rl:
        cis = rl.get("ag_ci95") or [None] * len(rl["fractions"])
        lines += ["", "relearning AG (points): " + ", ".join(
            f"{f:g}: {fmt_ci(g, ci)}" for f, g, ci in zip(rl["fractions"], rl["ag"], cis))]
    lines += targets_lines(r)
    e = r["efficiency"]
    lines += ["", f"unlearning: {e['unlearn_seconds']:.1f} s per split, {e['steps']} steps, "
                  f"{e['trainable_params']:,} of {e['total_params']:,} params trained"]
    return "\n".join(lines)


def single_run_markdown(r: dict) -> str:
    van, unl = r["vanilla"], r["unlearned"]
    bench = benchmark_of(r)
    headline, sets, all_metrics = bench.headline, bench.sets, bench.all_metrics
    lines = [f"# Unlearning report: {r['method']} on {bench.name}", ""]
    cfg = r.get("config", {})
    lines.append(f"Method `{r['method']}`, forget {cfg.get('forget_ratio', '?')}%, seed {cfg.get('seed', '?')}, "
                 f"{r['efficiency']['steps']} unlearning steps. Accuracies in % (chance {bench.chance:g}), ROUGE in "
                 "[0, 1]; forget VQA should fall, forget QA stay at vanilla (text knowledge kept), everything else "
                 "stay high.")
    lines += ["", protocol_line(r.get("protocol") or {}, bench.name,
                                str((cfg.get("eval") or {}).get("clear_reading", "followup")))]
    if (cfg.get("eval") or {}).get("cls_scoring") == "likelihood":
        lines += ["", "Classification is scored by option likelihood (`eval.cls_scoring=\"likelihood\"`: the option "
                  "whose text is the likeliest answer), not by the generated letter: the tiny model is trained to "
                  "answer multiple-choice items with the option's text (`data.cls_answer=\"option\"`)."]
    if cfg.get("export_hf"):
        ed = cfg.get("export_dtype") or ""
        lines += ["", "`hf_export` holds every tensor in " + (f"`{ed}` (`export_dtype`)." if ed else
                  "its storage dtype, the input checkpoint's (`export_dtype=\"\"`): what the method did not train "
                  "is bitwise the input.")]
    stages = cfg.get("stages") or {}
    captioned = [n for n in ("pretrain", "vanilla") if "caption" in ((stages.get(n) or {}).get("streams") or ())]
    if captioned:
        lines += ["", f"The vanilla model's {' and '.join(captioned)} stage{'s' if len(captioned) > 1 else ''} also "
                  "trained on captioned generic images outside every split (stream `caption`), standing in for "
                  "LLaVA's pretrained vision tower."]
    if r["method"] == "vkd" and float((cfg.get("vkd") or {}).get("b_g", 0) or 0) > 0:
        lines += ["", f"VKD also distilled the projector features of generic images outside every split "
                  f"(`vkd.b_g={float(cfg['vkd']['b_g']):g}`): no forget, retain, test or celebrity image."]
    lines += ["", "## Headline", ""] + headline_lines(r)
    lines += targets_lines(r)
    if "official" in unl:  # CLEAR, the benchmark's own metrics (eval.clear_reading="official")
        models = [(n, r[n]["official"]) for n in ("vanilla", "unlearned", "reference") if "official" in r.get(n, {})]
        lines += ["", "CLEAR's own metrics (Forget Quality: KS-test p-value of the forget truth ratios against the "
                  "retain-only reference model's; Model Utility: harmonic mean over the non-forget tasks):", "",
                  "| model | Forget Quality | Model Utility | forget ROUGE-L recall | forget Prob | "
                  "forget Truth Ratio |",
                  "|---|---|---|---|---|---|"]
        for name, o in models:
            f = o.get("eval_log_forget", {})
            lines.append(f"| {name} | " + " | ".join(fmt(x, 3) for x in (
                f.get("forget_quality"), o.get("model_utility"), f.get("rougeL_recall"), f.get("prob"),
                f.get("truth_ratio"))) + " |")
    floors = r.get("floors") or {}
    floor = floors.get("identity_free_forget_vqa_cls_acc")
    if floor is not None:
        lines += ["", f"Floors for forget VQA: chance {fmt(bench.chance)}%, identity-free "
                      f"{fmt_ci(floor, floors.get('identity_free_forget_vqa_cls_acc_ci95'))}% (the vanilla model "
                      "shown the mean image instead of the person). Forgotten means near these, not far below them."]
    flags = []
    for s, m, _, direction in headline:
        if direction != "down":
            continue
        v = _get(unl, s, m)
        if v is not None and v < bench.chance - 10:
            flags.append(f"{s} VQA accuracy {v:.1f}% is far below chance ({bench.chance:g}%): the answers are "
                         "systematically "
                         "avoided, which still leaks them.")
    if flags:
        lines += ["", "**Warning:** " + " ".join(flags)]
    lines += ["", "## All metrics", "",
              "| set | model | " + " | ".join(all_metrics) + " |", "|---|---|" + "---|" * len(all_metrics)]
    for s in sets:
        for name, res in (("vanilla", van), ("unlearned", unl)):
            digits = lambda m: 3 if "rouge" in m else 1
            lines.append(f"| {s} | {name} | " + " | ".join(cell(res, s, m, digits(m)) for m in all_metrics)
                         + " |")
    e = r["efficiency"]
    lines += ["", "## Cost", "", "| unlearning wall time per split (s) | steps | trainable params | total params | "
              "trainable % |",
              "|---|---|---|---|---|",
              f"| {e['unlearn_seconds']:.1f} | {e['steps']} | {e['trainable_params']:,} | {e['total_params']:,} | "
              f"{100 * e['trainable_params'] / max(e['total_params'], 1):.1f} |"]
    if r.get("masks"):
        kf = r["masks"]["kept_fraction"]
        lines += ["", "## Saliency mask (fraction of weights kept)", "", "| module | kept |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in sorted(kf.items())]
    rl = r.get("relearn")
    if rl:
        lines += ["", "## Relearning attack", "",
                  f"Fine-tune {_relearn_params(r)} on a fraction of the forget VQA questions for "
                  f"{rl.get('steps', '?')} steps; "
                  "score forget VQA on the questions not used. AG = after - before (points). Where a fraction has "
                  "several attacks (cross-fitting), each trains on another window of the questions so that every "
                  "question is scored at least once, and their scores are pooled.", "",
                  "| fraction | attacks | questions scored | before | after | AG [95% interval] | recovery vs vanilla "
                  "|",
                  "|---|---|---|---|---|---|---|"]
        v0 = _get(van, "forget", bench.relearn_metric)
        cis = rl.get("ag_ci95") or [None] * len(rl["fractions"])
        ns = rl.get("n_eval") or ["-"] * len(rl["fractions"])
        ks = rl.get("attacks") or [1] * len(rl["fractions"])
        for f, k, n, b, a, g, ci in zip(rl["fractions"], ks, ns, rl["before"], rl["forget_vqa_cls_acc"], rl["ag"],
                                        cis):
            # recovery is only meaningful when unlearning removed something (>= 5 points below vanilla)
            rec = None if v0 is None or v0 - b < 5 else 100 * (a - b) / (v0 - b)
            lines.append(f"| {f:g} | {k} | {n} | {fmt(b)} | {fmt(a)} | {fmt_ci(g, ci)} | "
                         f"{'-' if rec is None else f'{rec:.1f}%'} |")
    pr = r.get("probe")
    if pr:
        lines += ["", "## Representation probe", "",
                  "A linear probe on the visual features (projector output, mean over image tokens) of the forget and "
                  "retain people's training images, scored on their held-out images: identity accuracy in % "
                  f"(chance {fmt(pr['vanilla'].get('chance'))}). Forgotten in the representation means the forget "
                  "people's accuracy falls toward chance while the retain people's stays.", "",
                  "| model | forget people | retain people |", "|---|---|---|"]
        for name in ("vanilla", "unlearned"):
            lines.append(f"| {name} | {fmt_ci(pr[name].get('forget_acc'), pr[name].get('forget_acc_ci95'))} | "
                         f"{fmt_ci(pr[name].get('retain_acc'), pr[name].get('retain_acc_ci95'))} |")
    lines += ["", "Plots: `plots/forget_vs_retain.png`, `plots/training_curves.png`, `plots/relearn.png`."]
    return "\n".join(lines) + "\n"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_fig(fig, path: str, dpi: int = 110):
    """PNG bytes rendered in memory, written atomically to a local path or URI; closes the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_sets(r: dict, path: str):
    plt = pyplot()
    bench = benchmark_of(r)
    sets = bench.sets
    fig, axes = plt.subplots(1, len(bench.plot_panels), figsize=(10, 3.8))
    for ax, (metric, title, top) in zip(axes, bench.plot_panels):
        xs = range(len(sets))
        for shift, model, label, colour in ((-0.2, "vanilla", "vanilla", "#7a9cc6"),
                                            (0.2, "unlearned", f"unlearned ({r['method']})", "#d9534f")):
            vals = [(_get(r[model], s, metric) or 0) for s in sets]
            ax.bar([x + shift for x in xs], vals, 0.4, label=label, color=colour,
                   yerr=error_bars(vals, [_get(r[model], s, f"{metric}_ci95") for s in sets]), capsize=3)
        if top > 2:
            ax.axhline(bench.chance, color="grey", ls="--", lw=1, label="chance")
        ax.set_xticks(list(xs), sets)
        ax.set_title(title)
        ax.set_ylim(0, top)
    axes[0].set_ylabel("%")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_fig(fig, path)


def error_bars(values, cis):
    """[2, n] distances below/above each value to its 95% interval's ends (0 where there is none)."""
    lo = [max(v - c[0], 0.0) if c and c[0] is not None else 0.0 for v, c in zip(values, cis)]
    hi = [max(c[1] - v, 0.0) if c and c[1] is not None else 0.0 for v, c in zip(values, cis)]
    return [lo, hi]


def plot_curves(curves_dirs: dict, path: str):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    any_curve = False
    for name, d in curves_dirs.items():
        steps, vals = read_curve(d)
        if steps:
            ax.plot(steps, vals, label=name)
            any_curve = True
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("training curves")
    if any_curve:
        ax.legend()
    fig.tight_layout()
    save_fig(fig, path)


def plot_relearn(r: dict, path: str):
    plt = pyplot()
    rl = r.get("relearn") or {}
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    if rl:
        cis = rl.get("ag_ci95") or [None] * len(rl["fractions"])
        # the interval of the gain, drawn around the after-relearning point
        ax.errorbar(rl["fractions"], rl["forget_vqa_cls_acc"],
                    yerr=error_bars(rl["ag"], cis), fmt="o-", capsize=3, color="#d9534f",
                    label="after relearning (bars: AG's 95% interval)")
        ax.plot(rl["fractions"], rl["before"], "s--", label="after unlearning", color="#7a9cc6")
        bench = benchmark_of(r)
        v0 = _get(r["vanilla"], "forget", bench.relearn_metric)
        if v0 is not None:
            ax.axhline(v0, color="green", ls=":", label="vanilla")
        ax.axhline(bench.chance, color="grey", ls="--", lw=1, label="chance")
        ax.legend(fontsize=8)
    ax.set_xlabel("fraction of forget questions relearnt")
    ax.set_ylabel("forget VQA accuracy on held-out questions (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"relearning attack ({r['method']})")
    fig.tight_layout()
    save_fig(fig, path)


def write_report(results: dict, workdir: str, curves_dirs: dict | None = None) -> None:
    plots = os.path.join(workdir, "plots")
    makedirs(plots)
    plot_sets(results, os.path.join(plots, "forget_vs_retain.png"))
    plot_curves(curves_dirs or {}, os.path.join(plots, "training_curves.png"))
    plot_relearn(results, os.path.join(plots, "relearn.png"))
    atomic_write_text(os.path.join(workdir, "report.md"), single_run_markdown(results))
