"""Saliency masks: the Fisher-ratio mask (MMUnlearner / SalUn style) and the optax transform that applies it.

F_f[w] = mean over forget batches of (dℓ/dw)^2, F_r the same over retain batches, ℓ the answer NLL;
m = 1[(F_f + eps) / (F_r + eps) >= tau], or the top `top_p` fraction of that ratio over all trainable weights.
The mask multiplies the *updates* inside the optax chain (after Adam, weight decay and the learning rate), so a
masked weight never moves, not even by weight decay; params are never edited. It lives in the optimizer state
(hence in every checkpoint) and is also saved on its own by the masks stage.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vkd_jax.unlearn.methods.common import nll


def fisher_fn(ctx):
    """jit (trainable, frozen, batch) -> {k: (dℓ/dw)^2} for one batch."""
    def sq_grad(trainable, frozen, b):
        g = jax.grad(lambda t: nll(ctx.apply(ctx.student(t, frozen), b).logits, b))(trainable)
        return jax.tree.map(lambda x: jnp.square(x.astype(jnp.float32)), g)
    return jax.jit(sq_grad)


def fisher(ctx, trainable, frozen, batches: Iterable[dict]) -> dict:
    fn, acc, n = fisher_fn(ctx), None, 0
    for b in batches:
        g = fn(trainable, frozen, b)
        acc = g if acc is None else jax.tree.map(jnp.add, acc, g)
        n += 1
    if not n:
        raise ValueError("saliency mask: no batches to estimate the Fisher information from")
    return jax.tree.map(lambda x: x / n, acc)


def ratio_masks(f_forget: dict, f_retain: dict, tau: float = 1.0, top_p: float | None = None,
                eps: float = 1e-12) -> dict:
    ratio = {k: (f_forget[k] + eps) / (f_retain[k] + eps) for k in f_forget}
    if top_p:
        if not 0 < top_p <= 1:
            raise ValueError(f"mask.top_p={top_p} must be in (0, 1]")
        flat = np.concatenate([np.asarray(v).ravel() for v in ratio.values()])
        k = max(int(round(top_p * flat.size)), 1)
        tau = float(np.partition(flat, flat.size - k)[flat.size - k])
    return {k: r >= tau for k, r in ratio.items()}


def module_of(key: str) -> str:
    """'vision_tower/layers/1/mlp/fc1/kernel' -> 'vision_tower/layers/1'; 'projector/linear_1/kernel' ->
    'projector'."""
    m = re.match(r"^(.*?/layers/\d+)/", key)
    return m.group(1) if m else key.split("/")[0]


def kept_fraction(masks: dict) -> dict[str, float]:
    kept, total = {}, {}
    for k, m in masks.items():
        mod = module_of(k)
        kept[mod] = kept.get(mod, 0) + int(np.asarray(m).sum())
        total[mod] = total.get(mod, 0) + int(np.asarray(m).size)
    out = {mod: kept[mod] / total[mod] for mod in sorted(kept)}
    out["all"] = sum(kept.values()) / max(sum(total.values()), 1)
    return out


class SaliencyMaskState(NamedTuple):
    mask: dict


def saliency_mask(masks: dict | None) -> optax.GradientTransformationExtraArgs:
    """Multiply updates by a fixed boolean mask held in the state; `apply_mask=False` (an extra arg to
    `update`) lets a step through unmasked (MMUnlearner's retain steps). masks=None: identity, empty state."""
    if masks is None:
        return optax.with_extra_args_support(optax.identity())

    def init(params):
        missing = set(params) - set(masks)
        if missing:
            raise ValueError(f"saliency mask lacks trainable params {sorted(missing)[:3]}")
        return SaliencyMaskState({k: jnp.asarray(masks[k], bool) for k in params})

    def update(updates, state, params=None, *, apply_mask=True, **_):
        new = {k: jnp.where(jnp.logical_or(state.mask[k], jnp.logical_not(apply_mask)), u, jnp.zeros_like(u))
               for k, u in updates.items()}
        return new, state
    return optax.GradientTransformationExtraArgs(init, update)
