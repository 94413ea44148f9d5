"""Stages: pretrain (the embedded world: celebrities before the profiles), vanilla (fine-tune on all profiles),
reference (retain only, NPO's π_ref), masks (saliency), unlearn (the configured method), relearn (the attack:
fine-tune the unlearned model on part of the forget data).

    result = run_stage(name, cfg, workdir, params, streams, model_config=..., reference=..., masks=...,
                       tokenizer=...)
    result.params  # {path tuple: array}, LoRA merged; result.masks for the masks stage

Each training stage resumes from <workdir>/<name>/ckpt after a kill; a finished stage writes
<workdir>/<name>/params (orbax params checkpoint, model_config.json) and is not re-run: run_stage loads it.
Streams are iterables of pipeline batches with get_state()/set_state() that do not run out (num_epochs=None):
  vanilla / reference: {"vqa", "qa"} (cfg.stages.<name>.streams); masks / unlearn: {"forget", "retain"} (VKD with
  b_g > 0 also "generic");
  relearn: {"forget"}.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from vkd_jax.config_base import STAGES, stage_seed
from vkd_jax.digests import verify_digests, write_digests
from vkd_jax.io_utils import AppendFile, as_path, atomic_write_text, exclusive, is_complete_dir, makedirs, orbax_dir
from vkd_jax.models.config import config_from_model_dict
from vkd_jax.models.hf_io import abstract_model, flat_params
from vkd_jax.models.orbax_io import load_model_orbax, save_params_orbax
from vkd_jax.unlearn import masks as masks_lib
from vkd_jax.unlearn import partition as pt
from vkd_jax.unlearn.methods import Ctx, make_method, method_config, spec_of
from vkd_jax.unlearn.metrics_log import MetricsLogger
from vkd_jax.unlearn.train import Trainer, prepare_batch


@dataclasses.dataclass
class StageResult:
    params: dict | None
    masks: dict | None = None
    metrics: dict | None = None


def model_config_of(cfg):
    return config_from_model_dict(cfg.model, dtype=cfg.dtype, param_dtype=cfg.param_dtype or "float32")


def stage_method(cfg, name: str) -> str:
    """The method a stage runs: config.method for unlearn, the stage's own (ft) for the others."""
    return cfg.method if name == "unlearn" else cfg.stages[name].method


def stage_partition(cfg, name: str) -> str:
    """The partition preset a stage trains: method_partition[config.method] for unlearn, the stage's own else."""
    return cfg.method_partition[cfg.method] if name == "unlearn" else cfg.stages[name].partition


def partition_cfg(cfg, preset: str, model_config):
    p = ml_collections.ConfigDict(cfg.partition.to_dict())
    p.preset = preset
    p.num_vit_layers = model_config.vision.num_hidden_layers
    return p


def optim_cfg(cfg, stage_cfg):
    o = ml_collections.ConfigDict(cfg.optim.to_dict())
    for k, v in stage_cfg.optim.items():
        o[k] = v
    return o


def save_masks(masks: dict, folder: str):
    with orbax_dir(folder, overwrite=True, collective=True) as tmp:
        with ocp.StandardCheckpointer() as ck:
            ck.save(os.path.join(tmp, "masks"), {k: np.asarray(v) for k, v in masks.items()})
            ck.wait_until_finished()
        if jax.process_index() == 0:
            as_path(tmp).joinpath("kept_fraction.json").write_text(
                json.dumps(masks_lib.kept_fraction(masks), indent=2))
            write_digests(tmp)


def load_masks(folder: str) -> dict:
    verify_digests(folder, "masks folder")
    with ocp.StandardCheckpointer() as ck:
        return dict(ck.restore(as_path(folder) / "masks"))


def compute_masks(cfg, params, streams, model_config, preset: str, workdir: str | None = None) -> dict:
    """One jit pass (per batch) over forget and retain batches -> boolean masks of the trainable params."""
    graphdef, abstract = abstract_model(model_config)
    part = pt.make_partition(abstract, partition_cfg(cfg, preset, model_config))
    ctx = Ctx(graphdef, part)
    trainable, frozen = jax.device_put(pt.split_params(params, part))  # a model kept on the host: placed once
    n = int(cfg.mask.num_batches)
    fisher = {s: masks_lib.fisher(ctx, trainable, frozen,
                                  (prepare_batch(b, None, s) for b in itertools.islice(streams[s], n)))
              for s in ("forget", "retain")}
    m = masks_lib.ratio_masks(fisher["forget"], fisher["retain"], tau=float(cfg.mask.tau),
                              top_p=float(cfg.mask.top_p) or None)
    m = jax.device_get(m)
    if workdir:
        save_masks(m, workdir)
        if jax.process_index() == 0:
            # beside the masks folder, not in it: its files are exactly the digested ones
            with AppendFile(os.path.join(os.path.dirname(os.fspath(workdir).rstrip("/")), "metrics.jsonl")) as f:
                f.write(json.dumps({"mask_kept_fraction": masks_lib.kept_fraction(m)}) + "\n")
    return m


def run_stage(name: str, cfg, workdir: str, params: dict, streams: dict, *, model_config=None,
              reference: dict | None = None, masks: dict | None = None, tokenizer=None, mesh=None,
              num_steps: int | None = None, stop_after: int | None = None, progress: bool = True,
              check=None) -> StageResult:
    """One stage (module docstring). `check`: (every, fn(step, params) -> stop), a training stage's stopping rule
    (vkd_jax.stopping): the stage ends at the first step it says so, saved as if it were the last."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages: {STAGES}")
    model_config = model_config or model_config_of(cfg)
    sdir = os.path.join(workdir, name)
    makedirs(sdir)
    if name == "masks":  # no stage section needed: the masks follow cfg.mask
        if is_complete_dir(os.path.join(sdir, "final")):
            return StageResult(None, load_masks(os.path.join(sdir, "final")))
        preset = stage_partition(cfg, "unlearn") if cfg.mask.modules == "unlearn" else cfg.mask.modules
        m = compute_masks(cfg, params, streams, model_config, preset, os.path.join(sdir, "final"))
        return StageResult(None, m)
    scfg = cfg.stages[name]
    final = os.path.join(sdir, "params")
    if is_complete_dir(final):  # finished before: never re-run
        return StageResult(flat_params(load_model_orbax(final)))
    with exclusive(sdir, name):  # another run on this work directory trains it first; then it is finished here
        if is_complete_dir(final):
            return StageResult(flat_params(load_model_orbax(final)))
        return _train_stage(name, cfg, sdir, final, scfg, params, streams, model_config, reference, masks,
                            tokenizer, mesh, num_steps, stop_after, progress, check)


def stage_training(cfg, name: str, model_config, tokenizer=None):
    """(method, partition config, optimiser config, mesh axis rules) a training stage trains with: the one reading
    of the config that the stage itself and the pipeline plan (vkd_jax.plan_pipeline) share."""
    scfg, method = cfg.stages[name], stage_method(cfg, name)
    spec = spec_of(method)
    # an unlearning method reads its own section; ft, the fine-tuning stages' method, reads its fields (streams)
    # from the stage's section
    mcfg = cfg[method] if spec.unlearning else method_config(method, **{k: scfg[k] for k in spec.fields})
    axis_rules = tuple((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in cfg.mesh.axis_rules)
    return (make_method(method, mcfg, tokenizer),
            partition_cfg(cfg, stage_partition(cfg, name), model_config), optim_cfg(cfg, scfg), axis_rules)


def _train_stage(name, cfg, sdir, final, scfg, params, streams, model_config, reference, masks, tokenizer, mesh,
                 num_steps, stop_after, progress, check=None) -> StageResult:
    method_name = stage_method(cfg, name)
    method, pcfg, ocfg, axis_rules = stage_training(cfg, name, model_config, tokenizer)
    missing = [s for s in method.streams if s not in streams]
    if missing:
        raise ValueError(f"stage {name!r} (method {method_name!r}) reads streams {list(method.streams)}; missing "
                         f"{missing} (given {sorted(streams)})")
    use_masks = masks if (method.needs_masks or (name == "unlearn" and scfg.use_masks)) else None
    if method.needs_reference and reference is None and cfg.npo.reference == "vanilla":
        reference = params
    steps = int(num_steps or scfg.num_steps)
    if mesh is None:
        mesh = pt.make_mesh(cfg.mesh)
    trainer = Trainer(model_config, params, method, partition_cfg=pcfg, optim_cfg=ocfg, num_steps=steps, mesh=mesh,
                      axis_rules=axis_rules, masks=use_masks, reference=reference, seed=stage_seed(cfg, name))
    per_step = sum(int(getattr(getattr(streams[s], "cfg", None), "global_batch_size", 0) or 0)
                   for s in method.streams)  # examples per step (global), for examples/s in logs and the bar
    logger = MetricsLogger(sdir, steps, desc=name, progress=progress, batch_examples=per_step)
    if use_masks is not None:
        logger.event({"mask_kept_fraction": masks_lib.kept_fraction(use_masks)})
    try:
        last = trainer.fit({s: streams[s] for s in method.streams}, workdir=sdir, ckpt_cfg=cfg.checkpoint,
                           log_every=int(cfg.checkpoint.log_every), logger=logger, stop_after=stop_after,
                           check=check)
    finally:
        logger.close()
    if stop_after is not None and int(trainer.state.step) < steps:
        return StageResult(trainer.params(), None, last)
    out = trainer.params()
    save_params_orbax(out, model_config, final, overwrite=True)
    atomic_write_text(os.path.join(sdir, "done.json"), json.dumps({"steps": int(trainer.state.step), "of": steps,
                                                                   "stopped_by_rule": trainer.stopped_at is not None,
                                                                   "last": {k: float(np.asarray(v))
                                                                            for k, v in (last or {}).items()}}))
    return StageResult(out, None, last)
