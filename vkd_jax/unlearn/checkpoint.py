"""Async, keep-last-N orbax checkpoints of a stage's full train state plus the data-iterator states.

Layout: <stage workdir>/ckpt/<step>/{state, data}. `state` = the Trainer state pytree (step, trainable params,
optimizer state including the saliency mask, RNG key, skipped-step count); `data` = JSON {stream: iterator state}.
Restoring takes the abstract state with the *current* mesh's shardings, so a checkpoint written on one mesh shape
restores onto another. The directory may be a gs:// URI: orbax writes it through epath and tensorstore.

Damage: once a save has finished (orbax saves asynchronously: `poll` at the next step boundary after that, or the
next save, or `wait`), process 0 records its files' digests in <step>/DIGESTS.json (vkd_jax.digests): the step is
sealed. Only sealed steps count as checkpoints;
restoring one checks its digests first, so a damaged checkpoint stops the run naming its folder. A step finished
but not sealed (killed in between) is deleted and its steps are run again from the sealed one before it.
"""

from __future__ import annotations

import jax
import orbax.checkpoint as ocp

from vkd_jax.digests import has_digests, verify_digests, write_digests
from vkd_jax.errors import UserError
from vkd_jax.io_utils import as_path


class CheckpointWriteError(UserError):
    """Writing a training checkpoint failed (a full disk, a quota): the sealed checkpoints before it are intact."""


def _reason(e: Exception) -> str:
    """The first line of a tensorstore/OS error, without the store spec it appends; a long one keeps its start and
    its end (where the OS's reason is, after the file's path)."""
    text = str(e).split(" [tensorstore_spec=")[0].splitlines()[0] if str(e) else type(e).__name__
    return text if len(text) <= 400 else f"{text[:200]} ... {text[-200:]}"


class StageCheckpointer:
    def __init__(self, directory: str, cfg):
        """cfg: the config's `checkpoint` section (keep, async_save)."""
        opts = ocp.CheckpointManagerOptions(max_to_keep=int(cfg["keep"]),
                                            enable_async_checkpointing=bool(cfg["async_save"]), create=True)
        self.mngr = ocp.CheckpointManager(as_path(directory), options=opts, item_names=("state", "data"))
        self.directory = directory
        self._unsealed: int | None = None  # the step whose save may still be in flight

    def _step_dir(self, step: int):
        return as_path(self.directory) / str(step)

    def _failed(self, step: int, e: Exception) -> CheckpointWriteError:
        sealed = [s for s in self.mngr.all_steps() if s != step and has_digests(self._step_dir(s))]
        intact = f"step {max(sealed)} is the newest intact checkpoint" if sealed else "no checkpoint is intact yet"
        return CheckpointWriteError(f"{self._step_dir(step)}: writing this training checkpoint failed ({_reason(e)}); "
                                    f"{intact}. Free space (or fix the path) and rerun the same command to resume")

    def _seal(self):
        """Wait for the save in flight and record its digests (process 0, once every process's part is written)."""
        if self._unsealed is None:
            return
        try:
            self.mngr.wait_until_finished()
        except Exception as e:  # the background write failed: say so in one line, naming the step and the last good
            step, self._unsealed = self._unsealed, None
            raise self._failed(step, e) from None
        if jax.process_index() == 0 and self._step_dir(self._unsealed).is_dir():
            write_digests(self._step_dir(self._unsealed))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"sealed {self.directory} {self._unsealed}")
        self._unsealed = None

    def poll(self):
        """Seal the last save as soon as orbax has finished it (one process: checked at every step boundary, so a
        finished checkpoint is unsealed only for about a step; several processes seal at the next save or wait,
        where all of them are together)."""
        if self._unsealed is not None and jax.process_count() == 1 and not self.mngr.is_saving_in_progress():
            self._seal()

    def latest_step(self):
        """The newest sealed step (None: none); newer unsealed ones are deleted (their steps will be run again)."""
        steps = sorted(self.mngr.all_steps(), reverse=True)
        for step in steps:
            if has_digests(self._step_dir(step)):
                return step
            self.mngr.delete(step)
        return None

    def save(self, step: int, state, data_state: dict):
        self._seal()
        try:
            self.mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         data=ocp.args.JsonSave(data_state)))
        except Exception as e:
            raise self._failed(step, e) from None
        self._unsealed = step

    def restore(self, abstract_state, shardings, step: int | None = None):
        step = self.latest_step() if step is None else step
        verify_digests(self._step_dir(step), "training checkpoint")
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
                              shardings)
        out = self.mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                              data=ocp.args.JsonRestore()))
        return out["state"], dict(out["data"] or {})

    def wait(self):
        self._seal()

    def close(self):
        self._seal()
        self.mngr.close()
