"""The whole pipeline behind `python -m vkd_jax.main`: data -> vanilla model -> unlearning -> evaluation -> report.

Work directory layout (every stage is cached; a rerun reuses what finished, a killed stage resumes):
  <shared>/benchmark/{raw,tfds,tokenizer}   embedded benchmark (parquet), its TFDS ArrayRecords, the tokenizer
  <shared>/init, pretrain/, vanilla/, reference/   the model before unlearning (shared by every method and seed)
  <run>/masks/, unlearn/, relearn/p<frac>/          this method's stages
  <run>/eval/<model>.json                           evaluation results per model
  <run>/results.json, report.md, plots/*.png, hf_export/
`shared` is the work directory itself for `main`; `reproduce` shares one across methods and seeds.

Both may be gs:// URIs: every read and write under them goes through `vkd_jax.io_utils` (etils.epath; orbax for
checkpoints). The benchmark folder is the exception: pyarrow, TFDS/ArrayRecord and tokenizers need local files, so
for a remote `shared` it lives in a local cache, `local_cache_dir(shared)/benchmark` (each host builds it there;
the embedded world is generated from config.data.world_seed, MLLMU-Bench prepared from config.data.manual_dir).
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from vkd_jax.attacks import relearn_attack
from vkd_jax.io_utils import atomic_write_text, local_staging_dir, makedirs, read_json_if_exists
from vkd_jax.run_eval import (
    eval_config,
    evaluate_cached,
    identity_free_floor_values,
    pool_splits,
    probe_cached,
    read_eval_values,
)
from vkd_jax.run_models import (
    build_model_config,
    count_params,
    host_params,
    initial_params,
    train_stage,
    uses_masks,
    uses_reference,
    vanilla_params,
)
from vkd_jax.run_streams import prepare_data, stage_streams
from vkd_jax.stopping import unlearn_check
from vkd_jax.unlearn.partition import make_mesh
from vkd_jax.workdir import check_shared, split_dir


def run_split(cfg, data, vanilla: dict, reference, method, model_config, workdir: str, shared: str, *,
              relearn: bool, mesh=None) -> dict:
    """One forget split from the vanilla model: masks, unlearning, the evaluations, the relearning attack, the
    probe and the identity-free floor; its results and the per-question values the pooled results are made of."""
    run_dir, shared_dir = split_dir(workdir, data.split), split_dir(shared, data.split)
    makedirs(run_dir)
    masks = None
    if uses_masks(cfg, method):
        masks = train_stage("masks", cfg, run_dir, vanilla, stage_streams("masks", data, cfg, model_config),
                            model_config, data.tokenizer, mesh=mesh).masks
    timing_path = os.path.join(run_dir, "unlearn", "timing.json")
    t = time.time()
    streams = stage_streams("unlearn", data, cfg, model_config, method)
    check = unlearn_check(cfg, data, vanilla, model_config, shared_dir, run_dir)
    unlearned = host_params(train_stage("unlearn", cfg, run_dir, vanilla, streams, model_config, data.tokenizer,
                                        reference=reference, masks=masks, check=check, mesh=mesh).params)
    timing = read_json_if_exists(timing_path)
    if timing is None:  # first (uninterrupted or resumed) completion: record its wall time
        timing = {"unlearn_seconds": time.time() - t}
        atomic_write_text(timing_path, json.dumps(timing))
    done = read_json_if_exists(os.path.join(run_dir, "unlearn", "done.json")) or {}
    out = {"split": data.split, "unlearn_seconds": timing["unlearn_seconds"], "unlearned_params": unlearned,
           "unlearn_steps": int(done.get("steps", cfg.stages.unlearn.num_steps)),
           "vanilla": evaluate_cached("vanilla", vanilla, cfg, data, model_config, shared_dir),
           "unlearned": evaluate_cached("unlearned", unlearned, cfg, data, model_config, run_dir)}
    out["values"] = {m: read_eval_values(data, d, m) for m, d in (("vanilla", shared_dir), ("unlearned", run_dir))}
    if masks is not None:
        from vkd_jax.unlearn.masks import kept_fraction

        out["masks"] = {"kept_fraction": kept_fraction(masks)}
    if relearn and cfg.stages.relearn.fractions:
        out["relearn"] = relearn_attack(cfg, data, unlearned, model_config, run_dir, mesh)
    if bool(cfg.eval.probe):
        out["probe"] = {"vanilla": probe_cached("vanilla", vanilla, cfg, data, model_config, shared_dir),
                        "unlearned": probe_cached("unlearned", unlearned, cfg, data, model_config, run_dir)}
    out["floor"], out["floor_values"] = identity_free_floor_values(vanilla, cfg, data, model_config, shared_dir)
    return out


def run(cfg, workdir: str, shared: str | None = None, *, relearn: bool = True,
        local_cache: str | None = None) -> dict:
    from vkd_jax.config_check import validate
    from vkd_jax.hub import resolve_hub_names
    from vkd_jax.unlearn.methods import make_method

    resolve_hub_names(cfg)  # repo ids typed for hf_dir / data.manual_dir -> their cached local folders
    validate(cfg)  # every bad field at once, before anything is written
    from vkd_jax.preflight import preflight

    preflight(cfg)  # a stage that cannot fit these devices: stop now, not hours into the run
    shared = shared or workdir
    makedirs(workdir)
    makedirs(shared)
    check_shared(cfg, shared)
    t_start = time.time()
    data = prepare_data(cfg, shared, local_cache)
    num_splits = int(cfg.splits) or data.num_splits()  # 0: every person of the world forgotten once
    split_data = [data.with_split(k) for k in range(num_splits)]  # a split too many: an error now
    model_config = build_model_config(cfg, data.tokenizer)
    mesh = make_mesh(cfg.mesh)  # every training stage's
    vanilla = host_params(vanilla_params(cfg, data, shared, model_config, mesh))
    method = make_method(cfg.method, cfg[cfg.method], data.tokenizer)
    reference = None
    if uses_reference(cfg, method):
        reference = host_params(train_stage("reference", cfg, shared, initial_params(cfg, data, shared, model_config),
                                            stage_streams("reference", data, cfg, model_config), model_config,
                                            data.tokenizer, mesh=mesh).params)
    splits = [run_split(cfg, d, vanilla, reference, method, model_config, workdir, shared, relearn=relearn,
                        mesh=mesh) for d in split_data]
    unlearned = splits[0]["unlearned_params"]  # the benchmark's own forget split: what hf_export holds
    results = {
        "benchmark": data.name,
        "method": cfg.method,
        "config": json.loads(cfg.to_json_best_effort()),
        "protocol": eval_config(cfg).protocol(),
        **pool_splits(data, splits),
    }
    if data.needs_reference_model(cfg):
        data.add_reference_comparison(results, evaluate_cached("reference", reference, cfg, data, model_config,
                                                               shared))
    n_train, n_total = count_params(cfg.method_partition[cfg.method], cfg, model_config)
    seconds = [s["unlearn_seconds"] for s in splits]
    results["efficiency"] = {"unlearn_seconds": float(np.mean(seconds)), "unlearn_seconds_total": float(sum(seconds)),
                             "steps": int(cfg.stages.unlearn.num_steps), "trainable_params": n_train,
                             "total_params": n_total}
    if cfg.stages.unlearn.stop_rule != "none":  # where the rule stopped each split
        steps = [s["unlearn_steps"] for s in splits]
        results["efficiency"].update(steps=float(np.mean(steps)), steps_per_split=steps,
                                     stop_rule=str(cfg.stages.unlearn.stop_rule))
    if "masks" in splits[0]:
        results["masks"] = splits[0]["masks"]
    results["seconds_total"] = time.time() - t_start
    if jax.process_index() == 0:
        from vkd_jax import report

        atomic_write_text(os.path.join(workdir, "results.json"), json.dumps(results, indent=2, sort_keys=True))
        report.write_report(results, workdir, curves_dirs={"unlearn": os.path.join(workdir, "unlearn"),
                                                            "vanilla": os.path.join(shared, "vanilla")})
        if cfg.export_hf:
            from vkd_jax.models.hf_io import save_hf_params

            template = data.tokenizer_dir
            # safetensors and shutil write local files: a remote hf_export is built locally, then uploaded
            with local_staging_dir(os.path.join(workdir, "hf_export"), overwrite=True) as out:
                save_hf_params(unlearned, model_config, out, template_hf_dir=template, overwrite=True,
                               dtype=cfg.export_dtype or None)
    return results
