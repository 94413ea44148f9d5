"""The one place a train step is built: the Trainer trains with it, the memory plan (`vkd_jax.plan`) compiles it
abstractly, and the benchmarks (bench/step.py, bench/gpu_7b.py) time it, so all of them measure the same step.

    built = build_step(model_config, method, partition_cfg=..., optim_cfg=..., num_steps=N, mesh=mesh,
                       axis_rules=rules, masks=None)
    built.abstract_state            # TrainState of ShapeDtypeStructs (no device memory)
    built.state_shardings           # TrainState of NamedShardings; also trainable/frozen/aux_shardings
    built.abstract_frozen, built.abstract_aux
    state = built.init(trainable, rng)                  # on the mesh, sharded
    state, metrics = built.jit(batch)(state, batch, frozen, aux)   # jitted per batch signature, state donated
    built.step                      # the pure step: (state, batch, frozen, aux) -> (state, metrics)

The state is a `TrainState` (step, trainable, opt_state, rng, skipped). Frozen params and the stop-gradient pytrees
(`aux`: teacher / reference) are separate arguments, never donated, never differentiated: `jax.grad` sees only
`trainable`, so frozen params get no weight-gradient computation and no optimizer state. Optimizer chain:
clip_by_global_norm -> Adam -> decoupled weight decay -> schedule -> saliency mask (last, so a masked weight never
moves). A non-finite loss or gradient norm keeps the old state and counts the step as skipped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vkd_jax.errors import ConfigError
from vkd_jax.models.hf_io import abstract_model
from vkd_jax.models.layers import activation_sharding
from vkd_jax.unlearn import masks as masks_lib
from vkd_jax.unlearn import partition as pt
from vkd_jax.unlearn.methods import Ctx, Method

SCHEDULES = ("constant", "linear", "cosine")  # the learning-rate schedules make_schedule knows


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    trainable: dict
    opt_state: Any
    rng: jax.Array
    skipped: jax.Array


def make_schedule(ocfg, num_steps: int):
    """ocfg: a stage's optimiser section, every field present (`stages.optim_cfg`; the config base declares them)."""
    lr, warm = float(ocfg["lr"]), int(ocfg["warmup_steps"])
    kind, end = ocfg["schedule"], float(ocfg["end_lr_factor"])
    decay = max(num_steps - warm, 1)
    if kind == "constant":
        main = optax.constant_schedule(lr)
    elif kind == "linear":
        main = optax.linear_schedule(lr, lr * end, decay)
    elif kind == "cosine":
        main = optax.cosine_decay_schedule(lr, decay, alpha=end)
    else:
        raise ValueError(f"optim.schedule {kind!r}: use one of {SCHEDULES}")
    if warm:
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), main], [warm])
    return main


def make_optimizer(ocfg, num_steps: int, masks: dict | None = None):
    sched = make_schedule(ocfg, num_steps)
    parts = []
    if float(ocfg["clip_norm"]) > 0:
        parts.append(optax.clip_by_global_norm(float(ocfg["clip_norm"])))
    parts.append(optax.scale_by_adam(b1=float(ocfg["b1"]), b2=float(ocfg["b2"]), eps=float(ocfg["eps"])))
    if float(ocfg["weight_decay"]) > 0:
        parts.append(optax.add_decayed_weights(float(ocfg["weight_decay"])))
    parts.append(optax.scale_by_learning_rate(sched))
    parts.append(masks_lib.saliency_mask(masks))
    return optax.chain(*parts), sched


def _accumulate(loss_fn, trainable, batch, rng, accum: int):
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum == 1:
        return grad_fn(trainable, batch, rng)

    def split(x):
        if x.shape[0] % accum:
            raise ConfigError(f"batch of {x.shape[0]} rows does not split into grad_accum={accum} microbatches")
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
    def step(state: TrainState, batch, frozen, aux):
        if shard_activations is None:
            return _step(state, batch, frozen, aux)
        with activation_sharding(shard_activations):
            return _step(state, batch, frozen, aux)

    def _step(state: TrainState, batch, frozen, aux):
        rng, sub = jax.random.split(state.rng)

        def loss_fn(trainable, b, r):
            return method.loss(ctx, trainable, frozen, aux, b, r, state.step)
        (loss, m), grads = _accumulate(loss_fn, state.trainable, batch, sub, accum)
        gnorm = optax.tree.norm(grads)
        extra = {} if method.mask_when is None else {"apply_mask": method.mask_when(state.step)}
        updates, opt_state = tx.update(grads, state.opt_state, state.trainable, **extra)
        new_tr = optax.apply_updates(state.trainable, updates)
        ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        new_state = TrainState(step=state.step + 1, rng=rng, skipped=state.skipped + (~ok).astype(jnp.int32),
                               trainable=keep(new_tr, state.trainable), opt_state=keep(opt_state, state.opt_state))
        metrics = {"loss": loss, "grad_norm": gnorm, "update_norm": optax.tree.norm(updates),
                   "param_norm": optax.tree.norm(new_state.trainable), "lr": sched(state.step),
                   "skipped": new_state.skipped, **m}
        return new_state, metrics
    return step


def initial_state(tx, trainable: dict, rng) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable, opt_state=tx.init(trainable), rng=rng,
                      skipped=jnp.zeros((), jnp.int32))


@dataclasses.dataclass
class BuiltStep:
    """Everything about one stage's step that does not depend on param values (see the module docstring)."""
    ctx: Ctx
    method: Method
    part: pt.Partition
    tx: Any
    sched: Any
    mesh: Any
    axis_rules: tuple
    step: Any
    abstract_state: TrainState
    state_shardings: TrainState
    trainable_shardings: dict
    frozen_shardings: dict
    abstract_frozen: dict
    aux_shardings: dict
    abstract_aux: dict
    _jitted: dict = dataclasses.field(default_factory=dict)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def init(self, trainable: dict, rng) -> TrainState:
        """The initial state on the mesh from (device-put, sharded) trainable params."""
        return jax.jit(lambda t, r: initial_state(self.tx, t, r), out_shardings=self.state_shardings)(trainable, rng)

    def batch_shardings(self, batch):
        return jax.tree.map(lambda x: pt.batch_sharding(self.mesh, np.ndim(x), self.axis_rules), batch)

    def jit(self, batch):
        """The jitted step for this batch's shapes and dtypes (one compile per signature), state donated."""
        key = str(jax.tree.map(lambda x: (np.shape(x), np.dtype(getattr(x, "dtype", np.asarray(x).dtype)).str),
                               batch))
        if key not in self._jitted:
            self._jitted[key] = jax.jit(
                self.step, in_shardings=(self.state_shardings, self.batch_shardings(batch), self.frozen_shardings,
                                         self.aux_shardings),
                out_shardings=(self.state_shardings, self.replicated), donate_argnums=(0,))
        return self._jitted[key]

    def aux_values(self, params: dict, reference: dict | None) -> dict:
        """The stop-gradient pytrees from full params ({str key: array}): the teacher (vanilla values of the
        trained params) and the reference (NPO's full params)."""
        out = {}
        if "teacher" in self.abstract_aux:
            out["teacher"] = {k: params[k] for k in self.abstract_aux["teacher"]}
        if "reference" in self.abstract_aux:
            if reference is None:
                raise ValueError(f"method {self.method.name!r} needs reference params")
            out["reference"] = {k: reference[k] for k in self.abstract_aux["reference"]}
        return out


def build_step(model_config, method: Method, *, partition_cfg, optim_cfg, num_steps: int, mesh,
               axis_rules=pt.DEFAULT_AXIS_RULES, masks: dict | None = None) -> BuiltStep:
    graphdef, abstract = abstract_model(model_config)
    part = pt.make_partition(abstract, partition_cfg)
    ctx = Ctx(graphdef, part)
    tx, sched = make_optimizer(optim_cfg, int(num_steps), masks)
    t_keys, f_keys = sorted(part.trainable_keys), sorted(part.frozen_keys)
    master = part.master_dtype
    abstract_train = {k: jax.ShapeDtypeStruct(part.shapes[k].shape, master or part.shapes[k].dtype) for k in t_keys}
    fdt = part.frozen_dtype
    abstract_frozen = {k: jax.ShapeDtypeStruct(part.shapes[k].shape, fdt or part.shapes[k].dtype) for k in f_keys}
    sh_train = pt.param_shardings(part, t_keys, mesh, axis_rules)
    sh_frozen = pt.param_shardings(part, f_keys, mesh, axis_rules)
    abstract_aux, sh_aux = {}, {}
    if method.needs_teacher:
        base = [k for k in t_keys if k in part.rules]
        abstract_aux["teacher"] = {k: part.shapes[k] for k in base}
        sh_aux["teacher"] = {k: sh_train[k] for k in base}
    if method.needs_reference:
        keys = sorted(part.rules)
        abstract_aux["reference"] = {k: part.shapes[k] for k in keys}
        sh_aux["reference"] = pt.param_shardings(part, keys, mesh, axis_rules)
    rep = NamedSharding(mesh, P())
    abstract_state = jax.eval_shape(lambda t, r: initial_state(tx, t, r), abstract_train, jax.random.PRNGKey(0))
    sh_state = TrainState(step=rep, rng=rep, skipped=rep, trainable=sh_train,
                          opt_state=pt.tree_shardings_like(abstract_state.opt_state, sh_train, part.shapes, mesh))
    accum = int(optim_cfg["grad_accum"])
    step = make_step(ctx, method, tx, sched, accum, pt.activation_shardings(mesh, axis_rules))
    return BuiltStep(ctx=ctx, method=method, part=part, tx=tx, sched=sched, mesh=mesh, axis_rules=tuple(axis_rules),
                     step=step, abstract_state=abstract_state, state_shardings=sh_state,
                     trainable_shardings=sh_train, frozen_shardings=sh_frozen, abstract_frozen=abstract_frozen,
                     aux_shardings=sh_aux, abstract_aux=abstract_aux)
