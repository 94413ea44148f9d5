"""Model configuration: our frozen dataclasses, read from and written to HF `config.json`.

The dataclasses are hashable (they live in the NNX graphdef, which jit treats as static), so nested HF
structures (rope scaling, the original config) are kept as tuples / a JSON string.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp

from vkd_jax.errors import ConfigError

_DTYPES = {
    "float32": jnp.float32, "fp32": jnp.float32, "f32": jnp.float32,
    "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16,
    "float16": jnp.float16, "fp16": jnp.float16, "f16": jnp.float16,
}


def canonical_dtype(name: str | Any) -> str:
    """'bf16' -> 'bfloat16' etc.; raises ConfigError naming the value."""
    if not isinstance(name, str):
        name = jnp.dtype(name).name
    key = name.lower().replace("torch.", "")
    if key not in _DTYPES:
        raise ConfigError(f"unsupported dtype {name!r}; use one of float32, bfloat16, float16")
    return jnp.dtype(_DTYPES[key]).name


def to_jnp_dtype(name: str):
    return jnp.dtype(canonical_dtype(name))


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 336
    patch_size: int = 14
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    remat: str = "none"  # runtime only (never in config.json): none | full | dots, see layers.REMAT_POLICIES

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 32064
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: int = 128
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    max_position_embeddings: int = 4096
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None
    remat: str = "none"  # runtime only (never in config.json): none | full | dots, see layers.REMAT_POLICIES


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    image_token_index: int = 32000
    image_seq_length: int = 576
    vision_feature_layer: int | tuple[int, ...] = -2
    vision_feature_select_strategy: str = "default"
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True
    tie_word_embeddings: bool = False
    param_dtype: str = "float32"  # storage dtype of the params (of every one not in param_dtype_overrides)
    dtype: str = "float32"  # compute dtype: weights are cast to it where they are used, never in storage
    # (our "/"-joined param path, dtype) for params stored in another dtype than param_dtype: a checkpoint read
    # "as stored" keeps each tensor's own dtype (e.g. fp32 norms in an fp16 file)
    param_dtype_overrides: tuple[tuple[str, str], ...] = ()
    hf_config_json: str = ""  # the HF config we were read from; written back with our fields on top

    def __post_init__(self):
        if isinstance(self.vision_feature_layer, list):
            object.__setattr__(self, "vision_feature_layer", tuple(self.vision_feature_layer))
        object.__setattr__(self, "param_dtype", canonical_dtype(self.param_dtype))
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        overrides = ((str(k), canonical_dtype(v)) for k, v in self.param_dtype_overrides)
        object.__setattr__(self, "param_dtype_overrides",
                           tuple(sorted((k, v) for k, v in overrides if v != self.param_dtype)))
        self.validate()

    # ---- derived -------------------------------------------------------------------------------------
    @property
    def feature_layers(self) -> tuple[int, ...]:
        v = self.vision_feature_layer
        return (v,) if isinstance(v, int) else tuple(v)

    @property
    def num_image_features(self) -> int:
        n = self.vision.num_patches
        return n + 1 if self.vision_feature_select_strategy == "full" else n

    def replace(self, **kw) -> LlavaConfig:
        return dataclasses.replace(self, **kw)

    def storage_dtype(self, path: str) -> str:
        """The dtype a param (our "/"-joined path) is stored in."""
        return dict(self.param_dtype_overrides).get(path, self.param_dtype)

    def with_storage_dtypes(self, dtypes: dict[str, str]) -> LlavaConfig:
        """This config with every param's storage dtype as given ({path: dtype}): the most common dtype (by tensor
        count) becomes param_dtype, the others are overrides."""
        if not dtypes:
            return self
        canon = {k: canonical_dtype(v) for k, v in dtypes.items()}
        counts: dict[str, int] = {}
        for v in canon.values():
            counts[v] = counts.get(v, 0) + 1
        main = max(sorted(counts), key=lambda d: counts[d])
        return self.replace(param_dtype=main,
                            param_dtype_overrides=tuple((k, v) for k, v in canon.items() if v != main))

    def with_remat(self, policy: str = "full", vision: bool = True, text: bool = True) -> LlavaConfig:
        """Activation checkpointing per CLIP encoder block and per Llama decoder block (training without a KV
        cache only); a runtime switch, not part of the HF config."""
        return self.replace(vision=dataclasses.replace(self.vision, remat=policy if vision else "none"),
                            text=dataclasses.replace(self.text, remat=policy if text else "none"))

    def validate(self) -> None:
        v, t = self.vision, self.text
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ConfigError(
                f"vision_feature_select_strategy={self.vision_feature_select_strategy!r}: expected 'default' or 'full'")
        n_hidden = v.num_hidden_layers + 1
        for layer in self.feature_layers:
            if not -n_hidden <= layer < n_hidden:
                raise ConfigError(f"vision_feature_layer={layer} is out of range for a vision tower with "
                                  f"{v.num_hidden_layers} layers ({n_hidden} hidden states)")
        if self.image_seq_length != self.num_image_features:
            raise ConfigError(
                f"image_seq_length={self.image_seq_length} does not match the vision tower: image_size "
                f"{v.image_size} / patch_size {v.patch_size} gives {v.num_patches} patches"
                f"{' + CLS' if self.vision_feature_select_strategy == 'full' else ''} = {self.num_image_features} "
                f"image features per image (vision_feature_select_strategy={self.vision_feature_select_strategy!r})")
        if v.hidden_size % v.num_attention_heads:
            raise ConfigError(f"vision_config.hidden_size={v.hidden_size} is not divisible by "
                              f"num_attention_heads={v.num_attention_heads}")
        if t.num_attention_heads % t.num_key_value_heads:
            raise ConfigError(f"text_config.num_attention_heads={t.num_attention_heads} is not a multiple of "
                              f"num_key_value_heads={t.num_key_value_heads}")
        for name, r in (("vision", v.remat), ("text", t.remat)):
            if r not in ("none", "full", "dots"):
                raise ConfigError(f"{name} remat={r!r}: use none, full or dots")
        if t.rope_type not in ("default", "linear"):
            raise ConfigError(f"text_config rope type {t.rope_type!r} is not supported (default, linear)")


# ---- HF config.json <-> LlavaConfig --------------------------------------------------------------------

def _rope_from_hf(tc: dict) -> tuple[float, str, float]:
    """RoPE from v5 `rope_parameters` or v4 `rope_theta` / `rope_scaling`."""
    params = tc.get("rope_parameters")
    if isinstance(params, dict) and params:
        theta = params.get("rope_theta", tc.get("rope_theta", 10000.0))
        rtype = params.get("rope_type", params.get("type", "default"))
        factor = params.get("factor", 1.0)
    else:
        theta = tc.get("rope_theta", 10000.0)
        scaling = tc.get("rope_scaling") or {}
        rtype = scaling.get("rope_type", scaling.get("type", "default"))
        factor = scaling.get("factor", 1.0)
    return float(theta), str(rtype), float(factor)


def _get(d: dict, key: str, default, where: str):
    if key in d and d[key] is not None:
        return d[key]
    if default is _REQUIRED:
        raise ConfigError(f"{where}: missing required field {key!r}")
    return default


_REQUIRED = object()


def config_from_hf_dict(cfg: dict, *, dtype: str = "float32", param_dtype: str | None = None,
                        source: str = "config.json") -> LlavaConfig:
    if cfg.get("model_type") not in (None, "llava"):
        raise ConfigError(f"{source}: model_type={cfg.get('model_type')!r}; expected 'llava'")
    vc = cfg.get("vision_config")
    tc = cfg.get("text_config")
    if not isinstance(vc, dict) or not isinstance(tc, dict):
        raise ConfigError(f"{source}: needs 'vision_config' and 'text_config' objects")
    if vc.get("model_type", "clip_vision_model") not in ("clip_vision_model", "clip"):
        raise ConfigError(f"{source}: vision_config.model_type={vc.get('model_type')!r}; only CLIP is supported")
    if tc.get("model_type", "llama") != "llama":
        raise ConfigError(f"{source}: text_config.model_type={tc.get('model_type')!r}; only llama is supported")
    wv, wt = f"{source}:vision_config", f"{source}:text_config"
    vision = VisionConfig(
        hidden_size=_get(vc, "hidden_size", 768, wv),
        intermediate_size=_get(vc, "intermediate_size", 3072, wv),
        num_hidden_layers=_get(vc, "num_hidden_layers", 12, wv),
        num_attention_heads=_get(vc, "num_attention_heads", 12, wv),
        num_channels=_get(vc, "num_channels", 3, wv),
        image_size=_get(vc, "image_size", 224, wv),
        patch_size=_get(vc, "patch_size", 32, wv),
        layer_norm_eps=float(_get(vc, "layer_norm_eps", 1e-5, wv)),
        hidden_act=_get(vc, "hidden_act", "quick_gelu", wv),
    )
    heads = _get(tc, "num_attention_heads", 32, wt)
    hidden = _get(tc, "hidden_size", 4096, wt)
    theta, rtype, factor = _rope_from_hf(tc)
    eos = tc.get("eos_token_id", 2)
    text = TextConfig(
        vocab_size=_get(tc, "vocab_size", 32000, wt),
        hidden_size=hidden,
        intermediate_size=_get(tc, "intermediate_size", 11008, wt),
        num_hidden_layers=_get(tc, "num_hidden_layers", 32, wt),
        num_attention_heads=heads,
        num_key_value_heads=_get(tc, "num_key_value_heads", heads, wt),
        head_dim=_get(tc, "head_dim", hidden // heads, wt),
        rms_norm_eps=float(_get(tc, "rms_norm_eps", 1e-6, wt)),
        rope_theta=theta, rope_type=rtype, rope_factor=factor,
        max_position_embeddings=_get(tc, "max_position_embeddings", 2048, wt),
        attention_bias=bool(tc.get("attention_bias", False)),
        mlp_bias=bool(tc.get("mlp_bias", False)),
        hidden_act=_get(tc, "hidden_act", "silu", wt),
        bos_token_id=tc.get("bos_token_id", 1),
        eos_token_id=eos[0] if isinstance(eos, list) else eos,
        pad_token_id=tc.get("pad_token_id"),
    )
    tie = bool(cfg.get("tie_word_embeddings", False) or tc.get("tie_word_embeddings", False))
    image_token = cfg.get("image_token_index", cfg.get("image_token_id", 32000))
    vfl = cfg.get("vision_feature_layer", -2)
    strategy = cfg.get("vision_feature_select_strategy", "default")
    n_feat = vision.num_patches + (1 if strategy == "full" else 0)
    try:
        return LlavaConfig(
            vision=vision, text=text, image_token_index=int(image_token),
            image_seq_length=int(cfg.get("image_seq_length", n_feat)),
            vision_feature_layer=tuple(vfl) if isinstance(vfl, list) else int(vfl),
            vision_feature_select_strategy=strategy,
            projector_hidden_act=cfg.get("projector_hidden_act", "gelu"),
            multimodal_projector_bias=bool(cfg.get("multimodal_projector_bias", True)),
            tie_word_embeddings=tie, dtype=dtype, param_dtype=param_dtype or dtype,
            hf_config_json=json.dumps(cfg, sort_keys=True),
        )
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def config_to_hf_dict(c: LlavaConfig) -> dict:
    """The HF config.json for `c`: the original (if any) with every field we model overwritten."""
    out = json.loads(c.hf_config_json) if c.hf_config_json else {}
    v, t = c.vision, c.text
    vc = dict(out.get("vision_config") or {})
    vc.update(model_type="clip_vision_model", hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
              num_hidden_layers=v.num_hidden_layers, num_attention_heads=v.num_attention_heads,
              num_channels=v.num_channels, image_size=v.image_size, patch_size=v.patch_size,
              layer_norm_eps=v.layer_norm_eps, hidden_act=v.hidden_act)
    tc = dict(out.get("text_config") or {})
    tc.update(model_type="llama", vocab_size=t.vocab_size, hidden_size=t.hidden_size,
              intermediate_size=t.intermediate_size, num_hidden_layers=t.num_hidden_layers,
              num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_key_value_heads,
              head_dim=t.head_dim, rms_norm_eps=t.rms_norm_eps, max_position_embeddings=t.max_position_embeddings,
              attention_bias=t.attention_bias, mlp_bias=t.mlp_bias, hidden_act=t.hidden_act,
              bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id, pad_token_id=t.pad_token_id,
              tie_word_embeddings=c.tie_word_embeddings)
    tc.pop("rope_scaling", None)
    rope = {"rope_type": t.rope_type, "rope_theta": t.rope_theta}
    if t.rope_type != "default":
        rope["factor"] = t.rope_factor
    tc["rope_parameters"] = rope
    tc["rope_theta"] = t.rope_theta  # v4 readers
    if t.rope_type != "default":
        tc["rope_scaling"] = dict(rope)
    out.update(model_type="llava", architectures=["LlavaForConditionalGeneration"], vision_config=vc,
               text_config=tc, image_token_index=c.image_token_index, image_seq_length=c.image_seq_length,
               vision_feature_layer=(c.vision_feature_layer if isinstance(c.vision_feature_layer, int)
                                     else list(c.vision_feature_layer)),
               vision_feature_select_strategy=c.vision_feature_select_strategy,
               projector_hidden_act=c.projector_hidden_act, multimodal_projector_bias=c.multimodal_projector_bias,
               tie_word_embeddings=c.tie_word_embeddings,
               torch_dtype=c.param_dtype, dtype=c.param_dtype)
    out.pop("image_token_id", None)
    return out


def read_hf_config(hf_dir: str | os.PathLike, *, dtype: str = "float32",
                   param_dtype: str | None = None) -> LlavaConfig:
    path = os.path.join(os.fspath(hf_dir), "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no config.json in the HF folder {hf_dir}")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    return config_from_hf_dict(cfg, dtype=dtype, param_dtype=param_dtype, source=path)


def config_from_model_dict(model: dict, *, dtype: str = "float32", param_dtype: str | None = None,
                           source: str = "config.model") -> LlavaConfig:
    """Build a LlavaConfig from the `model` section of an ml_collections config (HF config.json fields)."""
    if hasattr(model, "to_dict"):
        model = model.to_dict()
    return config_from_hf_dict(dict(model), dtype=dtype, param_dtype=param_dtype, source=source)
