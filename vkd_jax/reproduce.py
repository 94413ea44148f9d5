"""Every method (and VKD's ablations) over full-pipeline seeds, in one comparison table.

  python -m vkd_jax.reproduce --config configs/tiny.py --methods all --pipeline_seeds 0,1,2 --workdir W \
      [--seeds 0,1] [--ablations]

A pipeline seed P (config.seed) trains its own vanilla model (the benchmark's world fixed: data.world_seed), in
W/p<P>/shared, and every method runs from it; `--seeds` are unlearning seeds (config.unlearn_seed) nested below each
pipeline seed (default: one, the pipeline seed itself), each run in W/p<P>/runs/<name>_u<U>/ (masks, unlearning,
evaluation, relearning, probe, report). The table is mean ± std over pipeline seeds of each pipeline seed's mean
over its unlearning seeds; with several unlearning seeds it also gives their std (mean over pipeline seeds). The
vanilla row is the same statistic over the pipeline seeds' vanilla models. Finished runs are reused on a rerun.
Writes W/comparison.md, W/comparison.json and W/plots/{methods,relearn_methods}.png, with each run's point. W may
be a gs:// URI (see vkd_jax.experiment; --local_cache says where the benchmark is built then).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vkd_jax.comparison import comparison_markdown, plot_methods, plot_relearn, summarise, summarise_vanilla
from vkd_jax.io_utils import atomic_write_text, makedirs, read_json_if_exists, read_text, resolve
from vkd_jax.report import benchmark_of
from vkd_jax.tradeoff import paired_against, paired_markdown
from vkd_jax.unlearn.methods import UNLEARN_METHODS

PAIRED_REFERENCE = "vkd"  # by default every other run is compared with it question by question (vkd_jax.tradeoff)


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
    flags.DEFINE_string("pipeline_seeds", "0,1,2", "comma-separated pipeline seeds (config.seed): each trains its "
                        "own vanilla model")
    flags.DEFINE_string("seeds", "", "comma-separated unlearning seeds (config.unlearn_seed) under each pipeline "
                        "seed; empty: the pipeline seed itself")
    flags.DEFINE_bool("ablations", True, "also run VKD's ablations")
    flags.DEFINE_bool("relearn", True, "run the relearning attack for every run")
    flags.DEFINE_string("local_cache", None, "local folder for the benchmark when --workdir is a URI "
                        "(default $VKD_JAX_CACHE or ~/.cache/vkd_jax)")
    flags.mark_flags_as_required(["config", "workdir"])


def apply_overrides(cfg, overrides: dict):
    import ml_collections

    from vkd_jax.config_base import set_field

    c = ml_collections.ConfigDict(cfg.to_dict())
    for dotted, value in overrides.items():
        set_field(c, dotted, value)
    return c


def run_dir_of(workdir: str, name: str, pipeline_seed: int, unlearn_seed: int | None) -> str:
    u = pipeline_seed if unlearn_seed is None else unlearn_seed
    return os.path.join(workdir, f"p{pipeline_seed}", "runs", f"{name}_u{u}")


def reproduce(cfg, workdir: str, methods, pipeline_seeds, ablations, relearn: bool = True,
              local_cache: str | None = None, unlearn_seeds=None, variants: dict | None = None,
              paired_reference: str = PAIRED_REFERENCE) -> dict:
    """Every (pipeline seed, unlearning seed, run) of the plan, then the comparison (see the module doc).
    `variants`: more named runs {name: (method, config overrides)}, listed with the ablations; `paired_reference`:
    the run every other is compared with question by question."""
    import jax

    from vkd_jax import experiment
    from vkd_jax.config_check import validate
    from vkd_jax.hub import resolve_hub_names

    resolve_hub_names(cfg)
    table = ablations_for(cfg) if ablations else {}
    unknown = [a for a in ablations if a not in table]
    if unknown:
        raise ValueError(f"unknown ablations {unknown}; for this config: {sorted(table)}")
    table.update(variants or {})
    ablations = tuple(ablations) + tuple(v for v in (variants or {}) if v not in ablations)
    plan = [(m, m, {}) for m in methods] + [(a, *table[a]) for a in ablations]
    units = [(p, u) for p in pipeline_seeds for u in (unlearn_seeds or (None,))]

    def config(name_method_overrides, p, u):
        _, method, overrides = name_method_overrides
        return apply_overrides(cfg, {"seed": p, "unlearn_seed": -1 if u is None else u, "method": method,
                                     **overrides})

    for p, u in units:  # every config that will run, before the first one starts
        for item in plan:
            if read_json_if_exists(os.path.join(run_dir_of(workdir, item[0], p, u), "results.json")) is None:
                validate(config(item, p, u))
    runs: dict[str, list[dict]] = {}
    for p, u in units:
        shared = os.path.join(workdir, f"p{p}", "shared")
        for item in plan:
            run_dir = run_dir_of(workdir, item[0], p, u)
            res = read_json_if_exists(os.path.join(run_dir, "results.json"))
            if res is None:
                logging.warning("run %s, pipeline seed %d, unlearning seed %s", item[0], p, p if u is None else u)
                res = experiment.run(config(item, p, u), run_dir, shared=shared, relearn=relearn,
                                     local_cache=local_cache)
            runs.setdefault(item[0], []).append(res)
    summary = summarise(runs)
    vanilla = summarise_vanilla(runs)
    bench = benchmark_of(next(iter(runs.values()))[0])
    headline = bench.headline
    label = (lambda p, u: str(p)) if unlearn_seeds is None else (lambda p, u: f"{p}/u{u}")
    paired = paired_against(bench, paired_reference, [
        (label(p, u), {item[0]: run_dir_of(workdir, item[0], p, u) for item in plan},
         os.path.join(workdir, f"p{p}", "shared")) for p, u in units])
    if jax.process_index() == 0:
        makedirs(os.path.join(workdir, "plots"))
        atomic_write_text(os.path.join(workdir, "comparison.json"), json.dumps(
            {"pipeline_seeds": list(pipeline_seeds), "unlearn_seeds": list(unlearn_seeds or ()),
             "vanilla": vanilla, "summary": summary, "paired": {"reference": paired_reference, "runs": paired}},
            indent=2))
        atomic_write_text(os.path.join(workdir, "comparison.md"), comparison_markdown(
            vanilla, summary, pipeline_seeds, methods, ablations, headline, runs=runs, unlearn_seeds=unlearn_seeds,
            chance=bench.chance) + "\n".join(paired_markdown(paired, paired_reference) + [""]))
        plot_methods(summary, vanilla, os.path.join(workdir, "plots", "methods.png"), headline, runs=runs,
                     chance=bench.chance)
        plot_relearn(runs, os.path.join(workdir, "plots", "relearn_methods.png"), chance=bench.chance)
    return summary


def int_list(flag: str, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in value.split(",") if s.strip())
    except ValueError:
        raise app.UsageError(f"--{flag}={value!r}: expected comma-separated integers") from None


def main(argv):
    del argv
    a = flags.FLAGS
    logging.set_verbosity(logging.WARNING)
    methods = UNLEARN_METHODS if a.methods == "all" else tuple(m.strip() for m in a.methods.split(","))
    unknown = set(methods) - set(UNLEARN_METHODS)
    if unknown:
        raise app.UsageError(f"--methods: unknown {sorted(unknown)}; known: {', '.join(UNLEARN_METHODS)}")
    pipeline_seeds = int_list("pipeline_seeds", a.pipeline_seeds)
    if not pipeline_seeds:
        raise app.UsageError("--pipeline_seeds: at least one")
    unlearn_seeds = int_list("seeds", a.seeds) or None
    from vkd_jax.cli import guarded
    from vkd_jax.config_base import config_from_flag

    workdir = resolve(a.workdir)
    with guarded([sys.executable, "-m", "vkd_jax.reproduce", *sys.argv[1:]]):
        cfg = config_from_flag(flags.FLAGS["config"])  # a variant of the command line: the file built again
        ablations = tuple(ablations_for(cfg)) if a.ablations else ()
        reproduce(cfg, workdir, methods, pipeline_seeds, ablations, relearn=a.relearn,
                  local_cache=a.local_cache, unlearn_seeds=unlearn_seeds)
    print(read_text(os.path.join(workdir, "comparison.md")))


if __name__ == "__main__":
    define_flags()
    app.run(main)
