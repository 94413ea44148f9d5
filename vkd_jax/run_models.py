"""A run's models: the model config (the embedded tiny model or an HF folder), the initial and vanilla params
(a shipped vanilla model, or pretrain + fine-tune in the shared folder), running one training stage, and which
models stay on the device (one-process runs keep the models they are not using in host memory).
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np

from vkd_jax.io_utils import is_complete_dir
from vkd_jax.run_streams import stage_streams


def build_model_config(cfg, tokenizer=None):
    """The model a run of `cfg` builds, in the config's dtypes and remat: hf_dir's config.json, else `cfg.model`
    with the tokenizer's vocabulary and special ids (the embedded world's). Without a tokenizer (the pipeline plan,
    which reads no data) an hf_dir that is not on this machine is planned from `cfg.model`, and a real-weights
    config (data.source local) stored in float16, as HF LLaVA folders store it."""
    from vkd_jax.models.config import config_from_model_dict
    from vkd_jax.models.hf_io import read_model_config

    hf_dir = str(cfg.hf_dir or "")
    if hf_dir and (tokenizer is not None or os.path.isfile(os.path.join(hf_dir, "config.json"))):
        mc = read_model_config(hf_dir, dtype=cfg.dtype, param_dtype=cfg.param_dtype or None)
    else:
        model = cfg.model.to_dict()
        if tokenizer is not None:
            model["text_config"].update(vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_id,
                                        eos_token_id=tokenizer.eos_id, bos_token_id=tokenizer.bos_id)
            model["image_token_index"] = tokenizer.image_token_id
        default = "float16" if tokenizer is None and cfg.data.source == "local" else "float32"
        mc = config_from_model_dict(model, dtype=cfg.dtype, param_dtype=cfg.param_dtype or default)
    return mc.with_remat(cfg.remat) if cfg.remat != "none" else mc


def host_params(params: dict) -> dict:
    """A model the run keeps between stages, in host memory: a stage or an evaluation puts it on its devices and
    lets go of them after, so no device holds a model it is not using (vkd_jax.plan_pipeline plans on that). A
    multi-process run keeps its (globally sharded) arrays where they are."""
    return params if jax.process_count() > 1 else jax.device_get(params)


def on_device(params: dict) -> dict:
    """A model's params on the default device for an evaluation (arrays already placed stay where they are)."""
    return jax.device_put(params)


def initial_params(cfg, data, shared: str, model_config) -> dict:
    from flax import nnx

    from vkd_jax.models.hf_io import flat_params, load_hf
    from vkd_jax.models.llava import Llava
    from vkd_jax.models.orbax_io import load_model_orbax, save_model_orbax

    ckpt = os.path.join(shared, "init")
    if is_complete_dir(ckpt):
        return host_params(flat_params(load_model_orbax(ckpt)))
    model = load_hf(cfg.hf_dir, dtype=cfg.dtype, param_dtype=cfg.param_dtype or None) if cfg.hf_dir else \
        Llava(model_config, rngs=nnx.Rngs(int(cfg.seed)))
    save_model_orbax(model, ckpt)
    return host_params(flat_params(model))


def train_stage(name, cfg, workdir, params, streams, model_config, tokenizer, **kw):
    """One stage of vkd_jax.unlearn.stages, on this run's model config and tokenizer."""
    from vkd_jax.unlearn.stages import run_stage

    return run_stage(name, cfg, workdir, params, streams, model_config=model_config, tokenizer=tokenizer, **kw)


def count_params(part_preset: str, cfg, model_config) -> tuple[int, int]:
    from vkd_jax.models.hf_io import abstract_model
    from vkd_jax.unlearn import partition as pt
    from vkd_jax.unlearn.stages import partition_cfg

    _, abstract = abstract_model(model_config)
    part = pt.make_partition(abstract, partition_cfg(cfg, part_preset, model_config))
    train = set(part.trainable_keys) | set(part.lora_keys)
    total = sum(int(np.prod(s.shape)) for s in abstract.values())
    n_train = sum(int(np.prod(abstract[k].shape)) for k in abstract if k in train)
    return n_train, total


def vanilla_params(cfg, data, shared: str, model_config, mesh=None) -> dict:
    """The shipped vanilla model whose fingerprint equals this config's (vkd_jax.shipped; `config.vanilla_model`),
    else init -> pretrain (embedded world only) -> vanilla fine-tune on all profiles, cached in `shared`."""
    from vkd_jax.shipped import vanilla_from_shipped

    if not is_complete_dir(os.path.join(shared, "vanilla")):
        shipped, why = vanilla_from_shipped(cfg, data, model_config)
        if jax.process_index() == 0:
            print(why, file=sys.stderr, flush=True)
        if shipped is not None:
            return shipped
    params = initial_params(cfg, data, shared, model_config)
    names = (["pretrain"] if cfg.data.source == "embedded" else []) + ["vanilla"]
    for name in names:
        if int(cfg.stages[name].num_steps) > 0:
            params = host_params(train_stage(name, cfg, shared, params, stage_streams(name, data, cfg, model_config),
                                                 model_config, data.tokenizer, mesh=mesh).params)
    return params


def uses_masks(cfg, method) -> bool:
    """Whether the unlearn stage of this config trains with saliency masks (so the masks stage runs)."""
    return bool(method.needs_masks or cfg.stages.unlearn.use_masks)


def uses_reference(cfg, method) -> bool:
    """Whether the run trains the reference model (retain only): NPO's, and the benchmark's evaluation's when it
    asks for one (CLEAR's official reading: Forget Quality)."""
    from vkd_jax.benchmarks import benchmark_class

    return bool((method.needs_reference and cfg.npo.reference == "retain")
                or benchmark_class(cfg.data.benchmark).needs_reference_model(cfg))
