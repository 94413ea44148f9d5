"""Params-only orbax checkpoints of the model, with the HF-style model config the training code reads.

Layout of a checkpoint folder C:
  C/model_config.json  HF config.json contents plus {"vkd_jax": {"dtype", "param_dtype", "param_dtype_overrides"}}
  C/params/            orbax StandardCheckpointer pytree: {"vision_tower/layers/0/mlp/fc1/kernel": array, ...}
  C/DIGESTS.json       size and sha256 of every file, checked before every restore (vkd_jax.digests)
The folder appears atomically: locally built under a temp name and renamed; on an object store written in place
(orbax commits `params/` atomically itself) and then marked `_COMPLETE` (`io_utils.orbax_dir`).
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from vkd_jax.digests import verify_digests, write_digests
from vkd_jax.errors import CheckpointError
from vkd_jax.io_utils import as_path, orbax_dir, resolve
from vkd_jax.models.config import LlavaConfig, config_from_hf_dict, config_to_hf_dict
from vkd_jax.models.hf_io import abstract_model, flat_params, model_from_flat_params
from vkd_jax.models.llava import Llava

CONFIG_FILE = "model_config.json"


def save_model_orbax(model: Llava, ckpt_dir: str | os.PathLike, *, overwrite: bool = False) -> str:
    return save_params_orbax(flat_params(model), model.config, ckpt_dir, overwrite=overwrite)


def save_params_orbax(params: dict, config: LlavaConfig, ckpt_dir, *, overwrite: bool = False) -> str:
    with orbax_dir(ckpt_dir, overwrite, collective=True) as tmp:
        cfg = config_to_hf_dict(config)
        cfg["vkd_jax"] = {"dtype": config.dtype, "param_dtype": config.param_dtype,
                          "param_dtype_overrides": [list(kv) for kv in config.param_dtype_overrides]}
        as_path(tmp).joinpath(CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True))
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(as_path(tmp) / "params", dict(params))
            ckptr.wait_until_finished()
        if jax.process_index() == 0:  # every process's shards are committed once the save has finished
            write_digests(tmp)
    return resolve(ckpt_dir)


def read_orbax_config(ckpt_dir, dtype: str | None = None, param_dtype: str | None = None) -> LlavaConfig:
    path = as_path(ckpt_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: not a vkd_jax params checkpoint (no {CONFIG_FILE})")
    cfg = json.loads(path.read_text())
    ours = cfg.pop("vkd_jax", {})
    config = config_from_hf_dict(cfg, dtype=dtype or ours.get("dtype", "float32"),
                                 param_dtype=param_dtype or ours.get("param_dtype"), source=str(path))
    if param_dtype:  # every param restored in the dtype asked for
        return config
    return config.replace(param_dtype_overrides=tuple(tuple(kv) for kv in ours.get("param_dtype_overrides", ())))


def load_model_orbax(ckpt_dir, *, dtype: str | None = None, param_dtype: str | None = None,
                     sharding_fn=None) -> Llava:
    """Restore a params checkpoint straight into (optionally sharded) arrays of the requested dtype, once its files
    match the digests recorded when it was written (vkd_jax.digests)."""
    verify_digests(ckpt_dir, "params checkpoint")
    config = read_orbax_config(ckpt_dir, dtype, param_dtype)
    graphdef, abstract = abstract_model(config)
    target = {}
    for p, sds in abstract.items():
        sharding = sharding_fn(p, sds.shape) if sharding_fn else None
        target[p] = jax.ShapeDtypeStruct(sds.shape, sds.dtype,
                                                   sharding=sharding or jax.sharding.SingleDeviceSharding(
                                                       jax.devices()[0]))
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(as_path(ckpt_dir) / "params", target)
    return model_from_flat_params(graphdef, {p: restored[p] for p in abstract})
