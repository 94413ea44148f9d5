"""What every method shares: the functional model call, answer-only NLL, KL, feature distances.

A method is `Method(name, streams, loss, ...)`; `loss(ctx, trainable, frozen, aux, batch, rng, step)` returns
(scalar, {metric: scalar}). `batch` holds one sub-batch per stream (e.g. batch["forget"], batch["retain"]), each
with input_ids / attention_mask / positions / labels / loss_mask [B, T] and pixel_values [B, C, H, W] when every
row holds an image. `aux` carries the stop-gradient pytrees: "teacher" (vanilla values of the params the
partition trains; the frozen ones are shared with `frozen`) and "reference" (a full params dict, NPO).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vkd_jax.models.hf_io import model_from_flat_params
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


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A method's declaration, written beside its loss and read by everything else (the registry in
    `vkd_jax.unlearn.methods`, the config base, the config check), so each fact about a method has one place.

    make(cfg, tokenizer) builds the Method from a section holding exactly `fields` (field -> default value);
    `choices`: the allowed values of its choice fields; `limits`: field -> (">=" | ">", bound);
    `partition`: the preset the unlearn stage trains by default (config.method_partition). None marks a method
    that is no unlearning method (ft, the fine-tuning stages'): it has no config section of its own, the stage's
    section carries its fields."""
    name: str
    make: Callable
    fields: dict
    choices: dict = dataclasses.field(default_factory=dict)
    limits: dict = dataclasses.field(default_factory=dict)
    partition: str | None = None

    @property
    def unlearning(self) -> bool:
        return self.partition is not None


class Ctx:
    """Static model pieces the losses close over (graphdef, partition)."""

    def __init__(self, graphdef, part: pt.Partition):
        self.graphdef, self.part = graphdef, part

    def model(self, full: dict):
        return model_from_flat_params(self.graphdef, full)

    def student(self, trainable, frozen, rng=None) -> dict:
        return pt.merge_params(trainable, frozen, self.part, lora_dropout_rng=rng, upcast=False)

    def teacher(self, frozen, teacher) -> dict:
        """Vanilla params: the frozen values (LoRA bases included) plus the stored vanilla values of the trained
        params; no gradient flows into them. Frozen values stay in their stored dtype (see merge_params)."""
        full = {k: teacher[k].astype(self.part.shapes[k].dtype) if rule == "train" else frozen[k]
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
                         position_ids=b.get("positions"), taps=tuple(taps), compute_logits=logits,
                         logits_at=b.get("logit_pos"))


def answer_slots(b: dict, min_slots: int = 8) -> dict:
    """Host-side: the positions whose logits the loss reads (t with an answer token at t+1), K per row, K the
    batch's longest answer rounded up to a power of two (>= min_slots, <= T-1: a handful of compiled shapes).
    Adds logit_pos / logit_labels / logit_mask [B, K] (padding slots: position 0, mask 0). The model then runs
    the final norm and the vocab head on K slots instead of T: the head is the largest single matmul of a
    short-answer VQA step (K ~ 16 of T ~ 600 with a 32k vocab)."""
    lm = np.asarray(b["loss_mask"])[:, 1:] > 0
    T = lm.shape[1] + 1
    n = int(lm.sum(1).max(initial=0))
    k = min(max(min_slots, 1 << max(n - 1, 0).bit_length()), T - 1)
    pos = np.zeros((lm.shape[0], k), np.int32)
    lab = np.zeros((lm.shape[0], k), np.int32)
    mask = np.zeros((lm.shape[0], k), np.float32)
    labels = np.asarray(b["labels"])
    for r in range(lm.shape[0]):
        t = np.nonzero(lm[r])[0]
        pos[r, :len(t)], lab[r, :len(t)], mask[r, :len(t)] = t, labels[r, t + 1], 1.0
    return dict(b, logit_pos=pos, logit_labels=lab, logit_mask=mask)


def _targets(b):
    """(labels, mask) aligned with the logits Ctx.apply returns: the answer slots when the batch has them
    (logits [B, K, V]), else every position t predicting t+1 (full logits [B, T, V], shifted)."""
    if "logit_pos" in b:
        return b["logit_labels"], b["logit_mask"].astype(jnp.float32)
    return b["labels"][:, 1:], b["loss_mask"][:, 1:].astype(jnp.float32)


def _shifted(logits, b):
    return logits if "logit_pos" in b else logits[:, :-1]


def token_logp(logits, b):
    """log p(answer token | its prefix) per logit slot -> [B, K] (or [B, T-1]) in fp32."""
    lp = jax.nn.log_softmax(_shifted(logits, b).astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(lp, _targets(b)[0][..., None], axis=-1)[..., 0]


def answer_mask(b):
    m = _targets(b)[1]
    if "valid" in b:
        m = m * b["valid"][:, None].astype(jnp.float32)
    return m


def nll(logits, b, bound: float | None = None):
    """Mean token NLL over answer tokens (the benchmark's ℓ); `bound` clips each token's CE from above (bounded
    GA: a token past the bound gives no more gradient)."""
    ce = -token_logp(logits, b)
    if bound is not None and bound > 0:
        ce = jnp.minimum(ce, bound)
    m = answer_mask(b)
    return jnp.sum(ce * m) / jnp.maximum(jnp.sum(m), 1.0)


def seq_logp(logits, b, mean: bool = False):
    """Per-sequence answer log-likelihood log π(y|x) [B] (or its per-token mean)."""
    m = answer_mask(b)
    s = jnp.sum(token_logp(logits, b) * m, axis=1)
    return s / jnp.maximum(jnp.sum(m, axis=1), 1.0) if mean else s


def kl_teacher_student(t_logits, s_logits, b):
    """KL(p_teacher || p_student) per answer position, averaged over them."""
    lt = jax.nn.log_softmax(_shifted(t_logits, b).astype(jnp.float32), -1)
    ls = jax.nn.log_softmax(_shifted(s_logits, b).astype(jnp.float32), -1)
    kl = jnp.sum(jnp.exp(lt) * (lt - ls), -1)
    m = answer_mask(b)
    return jnp.sum(kl * m) / jnp.maximum(jnp.sum(m), 1.0)


DISTANCES = ("mse", "cosine", "smooth_l1")  # the kinds feature_distance knows


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
        raise ValueError(f"feature distance {kind!r}: use one of {DISTANCES}")
    return jnp.mean(d)

