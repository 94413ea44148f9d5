"""The Trainer: one stage's training on the step that `vkd_jax.unlearn.step.build_step` builds (the memory plan and
the benchmarks compile the same step), with checkpoints, metrics and the non-finite guard.

    trainer = Trainer(model_config, params, method, partition_cfg=..., optim_cfg=..., num_steps=N, mesh=mesh)
    trainer.fit(streams, log_every=cfg.checkpoint.log_every, workdir=stage_dir, ckpt_cfg=cfg.checkpoint, logger=logger)
    trainer.params()   # full params, LoRA merged, each in its storage dtype

A non-finite loss or gradient norm keeps the old state (the step is skipped and counted); the host aborts with
FloatingPointError once more than `optim.max_skipped_steps` were skipped. The check lags one step: after
dispatching step n the host reads step n-1's counter (copied to the host asynchronously), so the device always has
the next step queued and there is no per-step synchronisation; the abort comes one step after the count is exceeded.
SIGTERM (vkd_jax.preemption) saves the step in flight at the next step boundary and raises Preempted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import jax
import numpy as np

from vkd_jax import preemption
from vkd_jax.unlearn import partition as pt
from vkd_jax.unlearn.methods import Method
from vkd_jax.unlearn.methods.common import answer_slots
from vkd_jax.unlearn.step import build_step

BATCH_KEYS = ("input_ids", "attention_mask", "positions", "labels", "loss_mask", "pixel_values", "valid")


def prepare_batch(b: dict, method: Method | None = None, stream: str = "") -> dict:
    """Host-side: numeric keys only; pixel_values kept only for all-image batches (static shapes); a mixed
    image/text batch is refused (keep VQA and QA in separate streams)."""
    if method is not None and method.host_transform is not None:
        b = method.host_transform(stream, b)
    out = {k: np.asarray(b[k]) for k in BATCH_KEYS if k in b}
    if "pixel_values" in out and "has_image" in b:
        has = np.asarray(b["has_image"])
        valid = np.asarray(b.get("valid", np.ones_like(has)))
        if not has[valid].any():
            del out["pixel_values"]
        elif not has.all():
            raise ValueError(f"stream {stream!r}: a batch mixes image and text-only rows; use separate VQA and QA "
                             f"pipelines (PipelineConfig.types) so every row of a VQA batch has its image")
    return answer_slots(out) if "labels" in out and "loss_mask" in out else out


class Trainer:
    """One stage's training: the built step, the concrete (sharded) params and state, the checkpointed loop.

    params: the full model params ({"a/b/c": array}); the teacher (the vanilla values of the trained
    params) is taken from `params` when the method needs one; reference: full params for NPO."""

    def __init__(self, model_config, params: dict, method: Method, *, partition_cfg, optim_cfg, num_steps: int,
                 mesh=None, axis_rules=pt.DEFAULT_AXIS_RULES, masks: dict | None = None,
                 reference: dict | None = None, seed: int = 0):
        self.model_config, self.method, self.num_steps = model_config, method, int(num_steps)
        self.mesh = mesh if mesh is not None else pt.make_mesh(None, jax.devices()[:1])
        self.axis_rules = axis_rules
        self.max_skipped = int(optim_cfg["max_skipped_steps"])
        if method.needs_masks and masks is None:
            raise ValueError(f"method {method.name!r} needs saliency masks: run the masks stage first")
        self.masks = masks
        self.built = build_step(model_config, method, partition_cfg=partition_cfg, optim_cfg=optim_cfg,
                                num_steps=self.num_steps, mesh=self.mesh, axis_rules=axis_rules, masks=self.masks)
        self.part, self.ctx = self.built.part, self.built.ctx
        trainable, frozen = pt.split_params(params, self.part, jax.random.PRNGKey(seed + 1))
        put = lambda tree, sh: {k: jax.device_put(v, sh[k], may_alias=False) for k, v in tree.items()}  # noqa
        self.frozen = put(frozen, self.built.frozen_shardings)
        aux = self.built.aux_values(params, reference)
        self.aux = {name: put(tree, self.built.aux_shardings[name]) for name, tree in aux.items()}
        self.state = self.built.init(put(trainable, self.built.trainable_shardings), jax.random.PRNGKey(seed))
        self._pending_skipped = None  # the previous step's device counter, read one step later

    # ---- stepping -----------------------------------------------------------------------------------------
    def prepare(self, raw: dict[str, dict]) -> dict:
        missing = [s for s in self.method.streams if s not in raw]
        if missing:
            raise ValueError(f"method {self.method.name!r} needs streams {self.method.streams}; missing {missing}")
        return {s: prepare_batch(raw[s], self.method, s) for s in self.method.streams}

    def step(self, raw: dict[str, dict]) -> dict:
        batch = self.prepare(raw)
        fn = self.built.jit(batch)
        self.state, metrics = fn(self.state, self.to_global(batch), self.frozen, self.aux)
        prev, self._pending_skipped = self._pending_skipped, metrics["skipped"]
        metrics["skipped"].copy_to_host_async()
        if prev is not None:  # step n-1 is done or nearly: this read does not drain the queue
            self._raise_if_skipped(int(prev), "one step ago")
        return metrics

    def to_global(self, batch):
        """Multi-process: each process holds only its rows (the pipeline's process slice); assemble the global
        batch arrays from them. One process: the numpy batch as is."""
        if jax.process_count() == 1:
            return batch
        return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, x), batch,
                            self.built.batch_shardings(batch))

    def check_skipped(self):
        """Synchronous check (log and checkpoint steps, and tests)."""
        skipped = int(self.state.skipped)
        self._raise_if_skipped(skipped, "now")
        return skipped

    def _raise_if_skipped(self, skipped: int, when: str):
        if skipped > self.max_skipped:
            raise FloatingPointError(
                f"{skipped} steps had a non-finite loss or gradient norm (more than optim.max_skipped_steps="
                f"{self.max_skipped}, counted {when}); stopped at step {int(self.state.step)}. Lower the "
                f"learning rate, check the data, or hold params in float32")

    # ---- results ------------------------------------------------------------------------------------------
    def params(self) -> dict:
        """Full params ({key: array}) with LoRA merged into the weights (export form), each in its storage
        dtype."""
        return pt.merge_lora(self.state.trainable, self.frozen, self.part)

    # ---- checkpointed loop --------------------------------------------------------------------------------
    def fit(self, streams: dict[str, Iterable], *, log_every: int, workdir: str | None = None, ckpt_cfg=None,
            logger=None, stop_after: int | None = None, check=None) -> dict:
        """Run to `num_steps`, resuming from the newest checkpoint under workdir/ckpt (written as the config's
        `checkpoint` section `ckpt_cfg` says; both or neither). `streams` must not run out (use num_epochs=None)
        and must have get_state()/set_state(). `stop_after`: stop (as if killed) after that many steps of this
        call, without a final checkpoint (tests). `check`: (every, fn): after every `every` steps (not the last),
        `fn(step, params)` -> True ends training there (`self.stopped_at`), as if it were the last step."""
        from vkd_jax.unlearn.checkpoint import StageCheckpointer
        self.stopped_at = None
        ckpt = StageCheckpointer(os.path.join(workdir, "ckpt"), ckpt_cfg) if workdir else None
        every = int(ckpt_cfg["every_steps"]) if ckpt is not None else None
        if ckpt is not None and ckpt.latest_step() is not None:
            self.state, data_state = ckpt.restore(self.built.abstract_state, self.built.state_shardings)
            for name, st in data_state.items():
                if name in streams:
                    streams[name].set_state(st)
        start = int(self.state.step)
        if logger is not None:
            logger.resume_at(start)  # throughput counts this call's steps only
        if check is not None and 0 < start < self.num_steps and start % check[0] == 0 and check[1](start,
                                                                                                  self.params()):
            self.stopped_at = start  # killed after the rule stopped it, before the stage was saved
            return None
        iters = {s: iter(streams[s]) for s in self.method.streams}
        last, done_now = {}, 0
        with preemption.deferred():  # SIGTERM: answered at the next step boundary, below
            for step in range(start, self.num_steps):
                try:
                    raw = {s: next(it) for s, it in iters.items()}
                except StopIteration:
                    raise ValueError(f"a data stream ran out at step {step} of {self.num_steps}; build training "
                                     f"pipelines with num_epochs=None") from None
                metrics = self.step(raw)
                n, done_now = step + 1, done_now + 1
                if stop_after is not None and done_now >= stop_after:
                    if ckpt is not None:
                        ckpt.wait()
                    return last
                if n % log_every == 0 or n == self.num_steps:
                    self.check_skipped()
                    last = jax.device_get(metrics)
                    if logger is not None:
                        logger.log(n, last)
                if ckpt is not None:
                    ckpt.poll()  # seal the previous checkpoint once orbax has finished it
                stop = check is not None and n % check[0] == 0 and n < self.num_steps and check[1](n, self.params())
                if stop:
                    self.stopped_at = n
                saved = ckpt is not None and (n % every == 0 or n == self.num_steps or stop)
                if saved:
                    self.check_skipped()
                    ckpt.save(n, self.state, {s: streams[s].get_state() for s in self.method.streams})
                if preemption.reached(n):  # every process at the same step (multi-process: the sync point)
                    if ckpt is None:
                        raise preemption.Preempted(f"preempted (SIGTERM) at step {n} of {self.num_steps}; "
                                                   "nothing saved (no work directory)")
                    if not saved:
                        ckpt.save(n, self.state, {s: streams[s].get_state() for s in self.method.streams})
                    ckpt.wait()  # written and sealed by every process before any exits
                    raise preemption.Preempted(f"preempted (SIGTERM) at step {n} of {self.num_steps}: saved in "
                                               f"{os.path.join(workdir, 'ckpt', str(n))}")
                if stop:
                    break
        if ckpt is not None:
            ckpt.wait()
        return last
