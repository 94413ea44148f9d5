"""Entry point: `python -m vkd_jax.main --config configs/tiny.py --workdir W`.

What runs today (the model layer): build the model the config describes (fresh random init for the tiny
config, or the HF weights in `config.hf_dir`), checkpoint it as W/model_init (orbax params + model config; reused
on a rerun), export it as an HF folder W/hf_init and check that the export reloads with identical logits, then
write W/summary.json. Data, unlearning and evaluation stages plug in here as they land.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "work directory (checkpoints, exports, reports)")
flags.mark_flags_as_required(["config", "workdir"])


def build_or_restore_model(cfg, workdir: str):
    from flax import nnx

    from vkd_jax.models.config import config_from_model_dict
    from vkd_jax.models.hf_io import load_hf
    from vkd_jax.models.llava import Llava
    from vkd_jax.models.orbax_io import load_model_orbax, save_model_orbax

    ckpt = os.path.join(workdir, "model_init")
    if os.path.isdir(ckpt):
        logging.info("reusing %s", ckpt)
        return load_model_orbax(ckpt), ckpt
    if cfg.hf_dir:
        model = load_hf(cfg.hf_dir, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    else:
        config = config_from_model_dict(cfg.model, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        model = Llava(config, rngs=nnx.Rngs(cfg.seed))
    save_model_orbax(model, ckpt)
    return model, ckpt


def main(argv):
    del argv
    import jax
    import numpy as np

    from vkd_jax.io_utils import atomic_write_text
    from vkd_jax.models.hf_io import load_hf, save_hf

    cfg, workdir = _CONFIG.value, os.path.abspath(_WORKDIR.value)
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    model, ckpt = build_or_restore_model(cfg, workdir)
    c = model.config
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(__import__("flax").nnx.state(model)))
    export = os.path.join(workdir, "hf_init")
    if not os.path.isdir(export):
        save_hf(model, export)
    rng = np.random.default_rng(cfg.seed)
    ids = rng.integers(4, c.text.vocab_size, size=(2, 8))
    ids = np.concatenate([ids[:, :2], np.full((2, c.image_seq_length), c.image_token_index), ids[:, 2:]], axis=1)
    px = rng.standard_normal((2, 3, c.vision.image_size, c.vision.image_size)).astype(np.float32)
    logits = np.asarray(jax.jit(lambda m, i, p: m(i, p))(model, ids, px))
    reloaded = np.asarray(load_hf(export, dtype=c.dtype, param_dtype=c.param_dtype)(ids, px))
    summary = {
        "params": n_params, "checkpoint": ckpt, "hf_export": export,
        "export_max_abs_logit_diff": float(np.abs(logits - reloaded).max()),
        "seconds": round(time.time() - t0, 2),
    }
    atomic_write_text(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app.run(main)
