"""Async, keep-last-N orbax checkpoints of a stage's full train state plus the data-iterator states.

Layout: <stage workdir>/ckpt/<step>/{state, data}. `state` = the Trainer state pytree (step, trainable params,
optimizer state including the saliency mask, RNG key, skipped-step count); `data` = JSON {stream: iterator state}.
Restoring takes the abstract state with the *current* mesh's shardings, so a checkpoint written on one mesh shape
restores onto another. The directory may be a gs:// URI: orbax writes it through epath and tensorstore.
"""

from __future__ import annotations

import jax
import orbax.checkpoint as ocp

from vkd_jax.io_utils import as_path


class StageCheckpointer:
    def __init__(self, directory: str, cfg=None):
        get = (lambda k, d: cfg.get(k, d)) if cfg is not None else (lambda k, d: d)
        opts = ocp.CheckpointManagerOptions(max_to_keep=int(get("keep", 2)),
                                            enable_async_checkpointing=bool(get("async_save", True)),
                                            create=True)
        self.mngr = ocp.CheckpointManager(as_path(directory), options=opts, item_names=("state", "data"))

    def latest_step(self):
        return self.mngr.latest_step()

    def save(self, step: int, state, data_state: dict):
        self.mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     data=ocp.args.JsonSave(data_state)))

    def restore(self, abstract_state, shardings, step: int | None = None):
        step = self.latest_step() if step is None else step
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
                              shardings)
        out = self.mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                              data=ocp.args.JsonRestore()))
        return out["state"], dict(out["data"] or {})

    def wait(self):
        self.mngr.wait_until_finished()

    def close(self):
        self.mngr.close()
