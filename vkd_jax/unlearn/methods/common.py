"""What every method shares: the functional model call, answer-only NLL, KL, feature distances.

A method is `Method(name, streams, loss, ...)`; `loss(ctx, trainable, frozen, aux, batch, rng, step)` returns
(scalar, {metric: scalar}). `batch` holds one sub-batch per stream (e.g. batch["forget"], batch["retain"]), each
with input_ids / attention_mask / positions / labels / loss_mask [B, T] and pixel_values [B, C, H, W] when every
row holds an image. `aux` carries the stop-gradient pytrees: "teacher" (vanilla values of the params the
partition trains; the frozen ones are shared with `frozen`) and "reference" (a full params dict, NPO).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from vkd_jax.models.llava import LlavaOutput, parse_taps
from vkd_jax.unlearn import partition as pt


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    streams: tuple[str, ...]
    loss: Callable
    needs_teacher: bool = False
    needs_reference: bool = False
    needs_masks: bool = False
    mask_when: Callable | None = None       # step -> bool: the saliency mask applies to this step's update
    host_transform: Callable | None = None  # (stream name, numpy batch) -> numpy batch (e.g. IDK answers)


class Ctx:
    """Static model pieces the losses close over (graphdef, path map, partition)."""

    def __init__(self, graphdef, keymap: dict[str, tuple], part: pt.Partition):
        self.graphdef, self.keymap, self.part = graphdef, keymap, part

    def model(self, full: dict):
        state = nnx.from_flat_state([(self.keymap[k], nnx.Param(v)) for k, v in full.items()])
        return nnx.merge(self.graphdef, state)

    def student(self, trainable, frozen, rng=None) -> dict:
        return pt.merge_params(trainable, frozen, self.part, lora_dropout_rng=rng)

    def teacher(self, frozen, teacher) -> dict:
        """Vanilla params: the frozen values (LoRA bases included) plus the stored vanilla values of the trained
        params; no gradient flows into them."""
        full = {k: (teacher[k] if rule == "train" else frozen[k]).astype(self.part.shapes[k].dtype)
                for k, rule in self.part.rules.items()}
        return jax.lax.stop_gradient(full)

    def apply(self, full: dict, b: dict, taps=(), logits: bool = True) -> LlavaOutput:
        """One forward. Vision/projector taps without logits run no LLM at all."""
        m = self.model(full)
        vision, proj, llm = parse_taps(taps)
        if not logits and not llm:
            feats, vh = m.encode_images(b["pixel_values"], vision)
            out = {f"vision:{i}": v for i, v in vh.items()}
            if proj:
                out["projector"] = feats
            return LlavaOutput(None, out, None)
        return m.forward(b["input_ids"], b.get("pixel_values"), b["attention_mask"].astype(bool),
                         position_ids=b.get("positions"), taps=tuple(taps), compute_logits=logits)


def token_logp(logits, labels):
    """log p(labels[:, t+1] | logits[:, t]) -> [B, T-1] in fp32."""
    lp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(lp, labels[:, 1:, None], axis=-1)[..., 0]


def answer_mask(b):
    m = b["loss_mask"][:, 1:].astype(jnp.float32)
    if "valid" in b:
        m = m * b["valid"][:, None].astype(jnp.float32)
    return m


def nll(logits, b, bound: float | None = None):
    """Mean token NLL over answer tokens (the benchmark's ℓ); `bound` clips each token's CE from above (bounded
    GA: a token past the bound gives no more gradient)."""
    ce = -token_logp(logits, b["labels"])
    if bound is not None and bound > 0:
        ce = jnp.minimum(ce, bound)
    m = answer_mask(b)
    return jnp.sum(ce * m) / jnp.maximum(jnp.sum(m), 1.0)


def seq_logp(logits, b, mean: bool = False):
    """Per-sequence answer log-likelihood log π(y|x) [B] (or its per-token mean)."""
    m = answer_mask(b)
    s = jnp.sum(token_logp(logits, b["labels"]) * m, axis=1)
    return s / jnp.maximum(jnp.sum(m, axis=1), 1.0) if mean else s


def kl_teacher_student(t_logits, s_logits, b):
    """KL(p_teacher || p_student) per answer position, averaged over them."""
    lt = jax.nn.log_softmax(t_logits[:, :-1].astype(jnp.float32), -1)
    ls = jax.nn.log_softmax(s_logits[:, :-1].astype(jnp.float32), -1)
    kl = jnp.sum(jnp.exp(lt) * (lt - ls), -1)
    m = answer_mask(b)
    return jnp.sum(kl * m) / jnp.maximum(jnp.sum(m), 1.0)


def feature_distance(s, t, kind: str = "mse"):
    """Per-token distance of [N, F, D] features, averaged over tokens (fp32)."""
    s, t = s.astype(jnp.float32), t.astype(jnp.float32)
    if kind == "mse":
        d = jnp.mean(jnp.square(s - t), -1)
    elif kind == "cosine":
        num = jnp.sum(s * t, -1)
        den = jnp.sqrt(jnp.sum(s * s, -1) * jnp.sum(t * t, -1)) + 1e-8
        d = 1.0 - num / den
    elif kind == "smooth_l1":
        a = jnp.abs(s - t)
        d = jnp.mean(jnp.where(a < 1.0, 0.5 * a * a, a - 0.5), -1)
    else:
        raise ValueError(f"feature distance {kind!r}: use mse, cosine or smooth_l1")
    return jnp.mean(d)


def get(cfg, key: str, default: Any):
    return cfg.get(key, default) if cfg is not None else default
