"""One param partition, declared in the config: trainable / frozen / LoRA, and sharding.

Params travel as flat dicts keyed by "/"-joined paths ("language_model/layers/0/mlp/up_proj/kernel"), which jit,
optax and orbax all treat as ordinary pytrees. Rules are ordered `(regex, rule)` lists; the first `re.search` match
wins and a param no rule matches is an error that names it (no silent default).

Dtypes: every param enters in its storage dtype (the checkpoint's, `LlavaConfig.storage_dtype`); trainable params
and LoRA adapters are trained as `master_dtype` copies (float32), frozen params stay as stored (or `frozen_dtype`
when a config asks), and `merge_lora` (the export form) gives every param back in its storage dtype, so a param that
never trained leaves a stage bitwise as it entered. The compute dtype is the model's and applies where weights are
used (never in storage).

Trainable rules: "train" (gets gradients and optimizer state), "frozen" (no gradient computation, no optimizer
state), "lora" (the 2-D kernel is frozen; adapters `<path>/lora_a` [din, r] and
`<path>/lora_b` [r, dout] train and are merged functionally, W + (alpha / r) A @ B, inside the loss and on export).
Sharding rules map a param to logical axes; `mesh.axis_rules` maps logical axes to the mesh axes data/fsdp/tensor.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vkd_jax.errors import ConfigError, UserError
from vkd_jax.models.config import to_jnp_dtype

LORA_A, LORA_B = "lora_a", "lora_b"
RULES = ("train", "frozen", "lora")


class PartitionError(UserError):
    """A param no rule covers, an unknown rule or preset, or a LoRA rule on a non-matrix."""


def first_match(rules: Sequence[tuple[str, Any]], name: str, what: str):
    for pattern, rule in rules:
        if re.search(pattern, name):
            return rule
    raise PartitionError(f"param {name!r} is not covered by any {what} rule; add a pattern for it "
                         f"(rules: {[r[0] for r in rules]})")


# ---- presets: the trainable-side switch of the config --------------------------------------------------------

# every preset preset_rules knows (the config's allowed values for a partition)
PRESETS = ("projector", "visual_last_k", "visual", "full", "llm", "lora_llm", "visual_lora_llm", "none")


def preset_rules(name: str, *, vit_last_k: int = 0, num_vit_layers: int = 0) -> list[tuple[str, str]]:
    """Named trainable sets. VKD: "projector", "visual_last_k" (projector + last k ViT blocks + post norm),
    "visual" (whole vision tower + projector); baselines: "full", "lora_llm" (LoRA on the LLM's linear layers,
    everything else frozen, as the public MLLMU-Bench baselines), "llm"; "visual_lora_llm" (the visual side at
    full rank and LoRA on the LLM's linear layers: every parameter any method changes when the baselines train
    "lora_llm", the relearning attack of the large configs)."""
    llm_linear = r"^language_model/layers/\d+/(self_attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)/kernel$"
    if name == "none":  # extra_rules alone decide
        return []
    if name == "projector":
        return [(r"^projector/", "train"), (r".*", "frozen")]
    if name == "visual_last_k":
        first = max(num_vit_layers - vit_last_k, 0)
        layers = "|".join(str(i) for i in range(first, num_vit_layers)) or "none"
        return [(r"^projector/", "train"), (rf"^vision_tower/layers/({layers})/", "train"),
                (r"^vision_tower/post_layernorm/", "train" if vit_last_k > 0 else "frozen"), (r".*", "frozen")]
    if name == "visual":
        return [(r"^(projector|vision_tower)/", "train"), (r".*", "frozen")]
    if name == "full":
        return [(r".*", "train")]
    if name == "llm":
        return [(r"^(language_model|lm_head)/", "train"), (r".*", "frozen")]
    if name == "lora_llm":
        return [(llm_linear, "lora"), (r".*", "frozen")]
    if name == "visual_lora_llm":
        return [(r"^(projector|vision_tower)/", "train"), (llm_linear, "lora"), (r".*", "frozen")]
    raise PartitionError(f"unknown partition preset {name!r}: {', '.join(PRESETS)}")


DEFAULT_SHARDING_RULES = (
    (r"embed_tokens/embedding$", ("vocab", "embed")),
    (r"lm_head/kernel$", ("embed", "vocab")),
    (r"(q_proj|k_proj|v_proj)/kernel$", ("embed", "heads")),
    (r"(o_proj|out_proj)/kernel$", ("heads", "embed")),
    (r"(gate_proj|up_proj|fc1|linear_1)/kernel$", ("embed", "mlp")),
    (r"(down_proj|fc2)/kernel$", ("mlp", "embed")),
    (r"linear_2/kernel$", ("mlp", "embed")),
    (r"/lora_a$", ("embed", None)),
    (r"/lora_b$", (None, "embed")),
    (r".*", ()),  # norms, biases, conv/patch embeddings: replicated
)
DEFAULT_AXIS_RULES = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
                      ("vocab", "tensor"))


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """The config's `partition.lora` section (its values: the config base)."""
    rank: int
    alpha: float
    dropout: float

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclasses.dataclass
class Partition:
    """What the config decided for each param of one model."""
    rules: dict[str, str]                      # base param -> train | frozen | lora
    shapes: dict[str, jax.ShapeDtypeStruct]    # every leaf (base params and LoRA adapters)
    logical: dict[str, tuple]                  # leaf -> logical axes
    lora: LoraConfig
    frozen_dtype: Any = None
    master_dtype: Any = None                   # trainable params and adapters train in this dtype (None: as stored)

    @property
    def trainable_keys(self) -> list[str]:
        out = [k for k, r in self.rules.items() if r == "train"]
        for k, r in self.rules.items():
            if r == "lora":
                out += [f"{k}/{LORA_A}", f"{k}/{LORA_B}"]
        return out

    @property
    def frozen_keys(self) -> list[str]:
        return [k for k, r in self.rules.items() if r in ("frozen", "lora")]

    @property
    def lora_keys(self) -> list[str]:
        return [k for k, r in self.rules.items() if r == "lora"]


def make_partition(abstract: dict, pcfg) -> Partition:
    """abstract: {key: ShapeDtypeStruct}; pcfg: the config's `partition` section with the stage's `preset` and the
    model's `num_vit_layers` (`stages.partition_cfg`), every field present."""
    rules = list(pcfg["extra_rules"] or ()) + preset_rules(
        pcfg["preset"], vit_last_k=int(pcfg["vit_last_k"]), num_vit_layers=int(pcfg["num_vit_layers"]))
    shard_rules = tuple(pcfg["sharding_rules"] or DEFAULT_SHARDING_RULES)  # None: the default rules
    lora = LoraConfig(**dict(pcfg["lora"]))
    decided, shapes, logical = {}, {}, {}
    for k, sds in abstract.items():
        rule = first_match(rules, k, "trainable")
        if rule not in RULES:
            raise PartitionError(f"param {k!r}: rule {rule!r} is not one of {RULES}")
        if rule == "lora" and len(sds.shape) != 2:
            raise PartitionError(f"param {k!r} of shape {sds.shape}: LoRA needs a 2-D kernel")
        decided[k] = rule
        shapes[k], logical[k] = sds, tuple(first_match(shard_rules, k, "sharding"))
        if rule == "lora":
            din, dout = sds.shape
            for name, shp in ((LORA_A, (din, lora.rank)), (LORA_B, (lora.rank, dout))):
                key = f"{k}/{name}"
                shapes[key] = jax.ShapeDtypeStruct(shp, sds.dtype)  # master_dtype while training
                logical[key] = tuple(first_match(shard_rules, key, "sharding"))
    fd = pcfg["frozen_dtype"] or None
    md = pcfg["master_dtype"] or None
    return Partition(decided, shapes, logical, lora, to_jnp_dtype(fd) if fd else None,
                     to_jnp_dtype(md) if md else None)


def split_params(params: dict, part: Partition, rng=None) -> tuple[dict, dict]:
    """Full flat params -> (trainable, frozen). LoRA adapters are created here (A ~ N(0, 1/r), B = 0: the merged
    model starts exactly at the base weights)."""
    missing = set(part.rules) - set(params)
    if missing:
        raise PartitionError(f"params lack {len(missing)} partitioned keys, e.g. {sorted(missing)[:3]}")
    trainable, frozen = {}, {}
    rng = jax.random.PRNGKey(0) if rng is None else rng
    for i, (k, rule) in enumerate(sorted(part.rules.items())):
        v = params[k]
        master = part.master_dtype or v.dtype
        if rule == "train":
            trainable[k] = v.astype(master)
            continue
        frozen[k] = v.astype(part.frozen_dtype) if part.frozen_dtype is not None else v
        if rule == "lora":
            din, dout = v.shape
            r = part.lora.rank
            trainable[f"{k}/{LORA_A}"] = (jax.random.normal(jax.random.fold_in(rng, i), (din, r), jnp.float32)
                                          / np.sqrt(r)).astype(master)
            trainable[f"{k}/{LORA_B}"] = jnp.zeros((r, dout), master)
    return trainable, frozen


def merge_params(trainable: dict, frozen: dict, part: Partition, lora_dropout_rng=None, upcast: bool = True) -> dict:
    """(trainable, frozen) -> the full base-param dict the model reads; LoRA merged (differentiable in the
    adapters). Frozen params held in a lower precision (`frozen_dtype`) are cast back to their storage dtype
    unless upcast=False: the losses pass False, since the model casts every weight to its compute dtype itself
    (bf16 -> f32 -> bf16 is exact), and an f32 copy of the frozen LLM would only cost memory.
    LoRA dropout (when an rng is given) drops input features of A for the whole batch: with merged weights
    there is no per-token dropout, which is the documented difference to peft."""
    out = {}
    for k, rule in part.rules.items():
        if rule == "train":
            out[k] = trainable[k]
            continue
        w = frozen[k]
        want = part.shapes[k].dtype
        if rule == "frozen":
            out[k] = w.astype(want) if upcast else w
            continue
        if rule == "lora":
            a, b = trainable[f"{k}/{LORA_A}"], trainable[f"{k}/{LORA_B}"]
            if lora_dropout_rng is not None and part.lora.dropout > 0:
                keep = 1.0 - part.lora.dropout
                m = jax.random.bernoulli(jax.random.fold_in(lora_dropout_rng, zlib.crc32(k.encode())), keep,
                                         (a.shape[0], 1))
                a = jnp.where(m, a / keep, 0).astype(a.dtype)
            w = (w.astype(jnp.float32) + part.lora.scale * (a.astype(jnp.float32) @ b.astype(jnp.float32))
                 ).astype(want)
        out[k] = w
    return out


def merge_lora(trainable: dict, frozen: dict, part: Partition) -> dict:
    """Export: the plain model params with LoRA folded into the weights (no adapters left), each in its storage
    dtype (trained masters rounded to it once, here; frozen params as they were)."""
    def export(t, f):
        return {k: v.astype(part.shapes[k].dtype) for k, v in merge_params(t, f, part).items()}
    return jax.jit(export)(trainable, frozen)


# ---- sharding ---------------------------------------------------------------------------------------------

def make_mesh(mcfg=None, devices=None) -> Mesh:
    """mesh config {data, fsdp, tensor} sizes (one may be -1: the rest of the devices); None: every device on
    the data axis."""
    devices = list(devices if devices is not None else jax.devices())
    shape = {"data": -1, "fsdp": 1, "tensor": 1}
    if mcfg is not None:
        shape = {k: int(mcfg[k]) for k in shape}
    fixed = int(np.prod([v for v in shape.values() if v != -1]))
    for k, v in shape.items():
        if v == -1:
            shape[k] = len(devices) // fixed
    if int(np.prod(list(shape.values()))) != len(devices):
        raise ConfigError(f"mesh {shape} does not use the {len(devices)} devices")
    # Auto axes: GSPMD propagates shardings from the pinned params, batch and activations (the explicit-sharding
    # mode, jax.make_mesh's default, would need every op's sharding spelled out)
    return jax.make_mesh(tuple(shape.values()), tuple(shape), axis_types=(AxisType.Auto,) * len(shape),
                         devices=devices)


def logical_to_spec(logical: tuple, shape: tuple, mesh: Mesh, axis_rules=DEFAULT_AXIS_RULES) -> P:
    """Logical axes -> PartitionSpec; a dim not divisible by its mesh axes (or a mesh axis already used) stays
    replicated, so tiny test models shard as far as they can."""
    table = dict(axis_rules)
    used, spec = set(), []
    for i, dim in enumerate(shape):
        name = logical[i] if i < len(logical) else None
        axes = table.get(name) if name else None
        if axes is None:
            spec.append(None)
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        axes = tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1 and a not in used)
        size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        if not axes or dim % size:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def param_shardings(part: Partition, keys, mesh: Mesh, axis_rules=DEFAULT_AXIS_RULES) -> dict:
    return {k: NamedSharding(mesh, logical_to_spec(part.logical[k], part.shapes[k].shape, mesh, axis_rules))
            for k in keys}


def activation_shardings(mesh: Mesh, axis_rules=DEFAULT_AXIS_RULES):
    """For models.layers.activation_sharding: logical activation axes -> NamedSharding on `mesh` (batch over
    data x fsdp, mlp/heads over tensor; a dim that does not divide stays replicated)."""
    def fn(logical: tuple, shape: tuple) -> NamedSharding:
        return NamedSharding(mesh, logical_to_spec(logical, shape, mesh, axis_rules))
    return fn


def batch_sharding(mesh: Mesh, ndim: int, axis_rules=DEFAULT_AXIS_RULES) -> NamedSharding:
    axes = dict(axis_rules)["batch"]
    axes = tuple(a for a in ((axes,) if isinstance(axes, str) else axes) if a in mesh.shape)
    return NamedSharding(mesh, P(axes, *([None] * (ndim - 1))))


def tree_shardings_like(tree, by_key: dict, shapes: dict, mesh: Mesh):
    """Shardings for an optimizer-state-like tree: a leaf under a dict key that names a param, with that param's
    shape, takes the param's sharding; everything else (counts, scalars) is replicated."""
    rep = NamedSharding(mesh, P())

    def pick(path, leaf):
        for entry in reversed(path):
            key = getattr(entry, "key", None)
            if isinstance(key, str) and key in by_key:
                same = tuple(getattr(leaf, "shape", ())) == tuple(shapes[key].shape)
                return by_key[key] if same else rep
        return rep
    return jax.tree_util.tree_map_with_path(pick, tree)
