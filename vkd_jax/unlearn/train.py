"""The train step and the Trainer that drives it.

State (a pytree, donated to every step): {"step", "trainable", "opt_state", "rng", "skipped"}. Frozen params and
the stop-gradient pytrees (`aux`: teacher / reference) are separate, never donated, never differentiated:

    state, metrics = step_fn(state, batch, frozen, aux)      # jax.jit, explicit in/out shardings

`jax.grad` sees only `trainable`, so frozen params get no weight-gradient computation and no optimizer state.
Optimizer chain: clip_by_global_norm -> Adam -> decoupled weight decay -> schedule -> saliency mask (last, so a
masked weight never moves). A non-finite loss or gradient norm keeps the old state (the step is skipped and
counted); the host aborts with FloatingPointError once more than `optim.max_skipped_steps` were skipped. The check
lags one step: after dispatching step n the host reads step n-1's counter (copied to the host asynchronously), so
the device always has the next step queued and there is no per-step synchronisation; the abort comes one step
after the count is exceeded.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from vkd_jax.models.hf_io import abstract_model
from vkd_jax.models.layers import activation_sharding
from vkd_jax.unlearn import masks as masks_lib
from vkd_jax.unlearn import partition as pt
from vkd_jax.unlearn.methods import Ctx, Method
from vkd_jax.unlearn.methods.common import answer_slots

BATCH_KEYS = ("input_ids", "attention_mask", "positions", "labels", "loss_mask", "pixel_values", "valid")


def _g(cfg, key, default):
    return cfg.get(key, default) if cfg is not None else default


def make_schedule(ocfg, num_steps: int):
    lr, warm = float(_g(ocfg, "lr", 1e-4)), int(_g(ocfg, "warmup_steps", 0))
    kind, end = _g(ocfg, "schedule", "linear"), float(_g(ocfg, "end_lr_factor", 0.0))
    decay = max(num_steps - warm, 1)
    if kind == "constant":
        main = optax.constant_schedule(lr)
    elif kind == "linear":
        main = optax.linear_schedule(lr, lr * end, decay)
    elif kind == "cosine":
        main = optax.cosine_decay_schedule(lr, decay, alpha=end)
    else:
        raise ValueError(f"optim.schedule {kind!r}: use constant, linear or cosine")
    if warm:
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), main], [warm])
    return main


def make_optimizer(ocfg, num_steps: int, masks: dict | None = None):
    sched = make_schedule(ocfg, num_steps)
    parts = []
    if float(_g(ocfg, "clip_norm", 1.0)) > 0:
        parts.append(optax.clip_by_global_norm(float(_g(ocfg, "clip_norm", 1.0))))
    parts.append(optax.scale_by_adam(b1=float(_g(ocfg, "b1", 0.9)), b2=float(_g(ocfg, "b2", 0.999)),
                                     eps=float(_g(ocfg, "eps", 1e-8))))
    if float(_g(ocfg, "weight_decay", 0.0)) > 0:
        parts.append(optax.add_decayed_weights(float(_g(ocfg, "weight_decay", 0.0))))
    parts.append(optax.scale_by_learning_rate(sched))
    parts.append(masks_lib.saliency_mask(masks))
    return optax.chain(*parts), sched


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


def _accumulate(loss_fn, trainable, batch, rng, accum: int):
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum == 1:
        return grad_fn(trainable, batch, rng)

    def split(x):
        if x.shape[0] % accum:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into grad_accum={accum} microbatches")
        return x.reshape((accum, x.shape[0] // accum) + x.shape[1:])
    micro = jax.tree.map(split, batch)

    def body(carry, xs):
        mb, i = xs
        (loss, m), g = grad_fn(trainable, mb, jax.random.fold_in(rng, i))
        acc_g, acc_l, acc_m = carry
        return (jax.tree.map(jnp.add, acc_g, g), acc_l + loss, jax.tree.map(jnp.add, acc_m, m)), None

    (_, m0), _ = jax.eval_shape(grad_fn, trainable, jax.tree.map(lambda x: x[0], micro), rng)
    zeros = (jax.tree.map(jnp.zeros_like, trainable), jnp.zeros((), jnp.float32),
             jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m0))
    (g, loss, m), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
    inv = 1.0 / accum
    return (loss * inv, jax.tree.map(lambda x: x * inv, m)), jax.tree.map(lambda x: (x * inv).astype(x.dtype), g)


def make_step(ctx: Ctx, method: Method, tx, sched, accum: int = 1, shard_activations=None):
    """The pure train step. shard_activations (partition.activation_shardings(mesh, rules)): pin the model's
    activations to the batch sharding while the step traces (see models.layers.constrain)."""
    def step(state, batch, frozen, aux):
        if shard_activations is None:
            return _step(state, batch, frozen, aux)
        with activation_sharding(shard_activations):
            return _step(state, batch, frozen, aux)

    def _step(state, batch, frozen, aux):
        rng, sub = jax.random.split(state["rng"])

        def loss_fn(trainable, b, r):
            return method.loss(ctx, trainable, frozen, aux, b, r, state["step"])
        (loss, m), grads = _accumulate(loss_fn, state["trainable"], batch, sub, accum)
        gnorm = optax.tree.norm(grads)
        extra = {} if method.mask_when is None else {"apply_mask": method.mask_when(state["step"])}
        updates, opt_state = tx.update(grads, state["opt_state"], state["trainable"], **extra)
        new_tr = optax.apply_updates(state["trainable"], updates)
        ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        new_state = {"step": state["step"] + 1, "rng": rng, "skipped": state["skipped"] + (~ok).astype(jnp.int32),
                     "trainable": keep(new_tr, state["trainable"]), "opt_state": keep(opt_state, state["opt_state"])}
        metrics = {"loss": loss, "grad_norm": gnorm, "update_norm": optax.tree.norm(updates),
                   "param_norm": optax.tree.norm(new_state["trainable"]), "lr": sched(state["step"]),
                   "skipped": new_state["skipped"], **m}
        return new_state, metrics
    return step


class Trainer:
    """One stage's training: partition, optimizer, sharded jitted step, checkpointed loop.

    params: the full model params ({path tuple or "a/b/c": array}); teacher = the vanilla values of the trained
    params are copied from `params` when the method needs them; reference: full params for NPO."""

    def __init__(self, model_config, params: dict, method: Method, *, partition_cfg, optim_cfg, num_steps: int,
                 mesh=None, axis_rules=pt.DEFAULT_AXIS_RULES, masks: dict | None = None,
                 reference: dict | None = None, seed: int = 0):
        self.model_config, self.method, self.num_steps = model_config, method, int(num_steps)
        self.mesh = mesh if mesh is not None else pt.make_mesh(None, jax.devices()[:1])
        self.axis_rules = axis_rules
        graphdef, abstract = abstract_model(model_config)
        self.part = pt.make_partition(abstract, partition_cfg)
        self.ctx = Ctx(graphdef, {pt.path_str(p): p for p in abstract}, self.part)
        self.accum = int(_g(optim_cfg, "grad_accum", 1))
        self.max_skipped = int(_g(optim_cfg, "max_skipped_steps", 10))
        if method.needs_masks and masks is None:
            raise ValueError(f"method {method.name!r} needs saliency masks: run the masks stage first")
        if masks is not None:
            masks = {k if isinstance(k, str) else pt.path_str(k): v for k, v in masks.items()}
        self.masks = masks
        self.tx, self.sched = make_optimizer(optim_cfg, self.num_steps, masks)
        params = {k if isinstance(k, str) else pt.path_str(k): v for k, v in params.items()}
        trainable, frozen = pt.split_params(params, self.part, jax.random.PRNGKey(seed + 1))
        t_keys, f_keys = sorted(trainable), sorted(frozen)
        self.sh_train = pt.param_shardings(self.part, t_keys, self.mesh, axis_rules)
        self.sh_frozen = pt.param_shardings(self.part, f_keys, self.mesh, axis_rules)
        put = lambda tree, sh: {k: jax.device_put(v, sh[k], may_alias=False) for k, v in tree.items()}  # noqa
        self.frozen = put(frozen, self.sh_frozen)
        self.aux, self.sh_aux = {}, {}
        if method.needs_teacher:
            base = [k for k in t_keys if k in self.part.rules]
            self.aux["teacher"] = put({k: params[k] for k in base}, self.sh_train)
            self.sh_aux["teacher"] = {k: self.sh_train[k] for k in base}
        if method.needs_reference:
            if reference is None:
                raise ValueError(f"method {method.name!r} needs reference params")
            reference = {k if isinstance(k, str) else pt.path_str(k): v for k, v in reference.items()}
            sh = pt.param_shardings(self.part, sorted(self.part.rules), self.mesh, axis_rules)
            self.aux["reference"] = put({k: reference[k] for k in self.part.rules}, sh)
            self.sh_aux["reference"] = sh
        rep = NamedSharding(self.mesh, P())
        init = lambda tr, key: {"step": jnp.zeros((), jnp.int32), "trainable": tr,  # noqa: E731
                                "opt_state": self.tx.init(tr), "rng": key, "skipped": jnp.zeros((), jnp.int32)}
        abstract_state = jax.eval_shape(init, trainable, jax.random.PRNGKey(seed))
        self.sh_state = self.state_shardings(abstract_state)
        self.state = jax.jit(init, out_shardings=self.sh_state)(put(trainable, self.sh_train),
                                                                 jax.random.PRNGKey(seed))
        self._abstract_state = abstract_state
        self._step = make_step(self.ctx, method, self.tx, self.sched, self.accum,
                               pt.activation_shardings(self.mesh, axis_rules))
        self._jitted = {}
        self._rep = rep
        self._pending_skipped = None  # the previous step's device counter, read one step later

    # ---- shardings ----------------------------------------------------------------------------------------
    def state_shardings(self, abstract_state):
        rep = NamedSharding(self.mesh, P())
        return {"step": rep, "rng": rep, "skipped": rep, "trainable": self.sh_train,
                "opt_state": pt.tree_shardings_like(abstract_state["opt_state"], self.sh_train, self.part.shapes,
                                                    self.mesh)}

    def batch_shardings(self, batch):
        return jax.tree.map(lambda x: pt.batch_sharding(self.mesh, np.ndim(x), self.axis_rules), batch)

    def compiled_step(self, batch):
        sig = jax.tree.map(lambda x: (np.shape(x), np.asarray(x).dtype.str), batch)
        key = str(sig)
        if key not in self._jitted:
            self._jitted[key] = jax.jit(
                self._step, in_shardings=(self.sh_state, self.batch_shardings(batch), self.sh_frozen, self.sh_aux),
                out_shardings=(self.sh_state, self._rep), donate_argnums=(0,))
        return self._jitted[key]

    # ---- stepping -----------------------------------------------------------------------------------------
    def prepare(self, raw: dict[str, dict]) -> dict:
        missing = [s for s in self.method.streams if s not in raw]
        if missing:
            raise ValueError(f"method {self.method.name!r} needs streams {self.method.streams}; missing {missing}")
        return {s: prepare_batch(raw[s], self.method, s) for s in self.method.streams}

    def step(self, raw: dict[str, dict]) -> dict:
        batch = self.prepare(raw)
        fn = self.compiled_step(batch)
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
                            self.batch_shardings(batch))

    def check_skipped(self):
        """Synchronous check (log and checkpoint steps, and tests)."""
        skipped = int(self.state["skipped"])
        self._raise_if_skipped(skipped, "now")
        return skipped

    def _raise_if_skipped(self, skipped: int, when: str):
        if skipped > self.max_skipped:
            raise FloatingPointError(
                f"{skipped} steps had a non-finite loss or gradient norm (more than optim.max_skipped_steps="
                f"{self.max_skipped}, counted {when}); stopped at step {int(self.state['step'])}. Lower the "
                f"learning rate, check the data, or hold params in float32")

    # ---- results ------------------------------------------------------------------------------------------
    def params(self, tuple_keys: bool = True) -> dict:
        """Full params with LoRA merged into the weights (export form)."""
        full = pt.merge_lora(self.state["trainable"], self.frozen, self.part)
        return {self.ctx.keymap[k]: v for k, v in full.items()} if tuple_keys else full

    # ---- checkpointed loop --------------------------------------------------------------------------------
    def fit(self, streams: dict[str, Iterable], *, workdir: str | None = None, ckpt_cfg=None, log_every: int = 10,
            logger=None, stop_after: int | None = None) -> dict:
        """Run to `num_steps`, resuming from the newest checkpoint under workdir/ckpt. `streams` must not run
        out (use num_epochs=None) and must have get_state()/set_state(). `stop_after`: stop (as if killed) after
        that many steps of this call, without a final checkpoint (tests)."""
        from vkd_jax.unlearn.checkpoint import StageCheckpointer
        ckpt = StageCheckpointer(os.path.join(workdir, "ckpt"), ckpt_cfg) if workdir else None
        every = int(_g(ckpt_cfg, "every_steps", 100))
        if ckpt is not None and ckpt.latest_step() is not None:
            self.state, data_state = ckpt.restore(self._abstract_state, self.sh_state)
            for name, st in data_state.items():
                if name in streams:
                    streams[name].set_state(st)
        start = int(self.state["step"])
        iters = {s: iter(streams[s]) for s in self.method.streams}
        last, done_now = {}, 0
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
            if ckpt is not None and (n % every == 0 or n == self.num_steps):
                self.check_skipped()
                ckpt.save(n, self.state, {s: streams[s].get_state() for s in self.method.streams})
        if ckpt is not None:
            ckpt.wait()
        return last
