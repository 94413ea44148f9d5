"""Hugging Face LLaVA folders <-> our NNX model, streamed tensor by tensor.

Our parameter paths mirror HF module names, so the key map is mechanical (`hf_key`). Incoming keys are first
normalised to the hub ("legacy") layout: `language_model.model.*`, `language_model.lm_head.*`,
`multi_modal_projector.*`, `vision_tower.vision_model.*`; this accepts transformers-5 files (`vision_tower.*`
without `vision_model.`) and in-memory names (`model.language_model.*`, `lm_head.weight`). We write the hub layout,
which transformers 4.x and 5.x both load.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vkd_jax.errors import CheckpointError
from vkd_jax.io_utils import atomic_dir
from vkd_jax.models.config import LlavaConfig, canonical_dtype, config_to_hf_dict, read_hf_config, to_jnp_dtype
from vkd_jax.models.llava import Llava
from vkd_jax.models.safetensors_io import SafetensorsFile, write_safetensors

# Params travel as flat dicts keyed by "/"-joined paths ("language_model/layers/0/mlp/up_proj/kernel"), which jit,
# optax and orbax treat as ordinary pytrees; nnx's tuple paths appear only here, where a model is split or merged.


def key_of(path: tuple) -> str:
    """nnx flat-state path -> our param key."""
    return "/".join(str(p) for p in path)


def path_of(key: str) -> tuple:
    """Our param key -> nnx flat-state path (layer indices as ints)."""
    return tuple(int(p) if p.isdigit() else p for p in key.split("/"))

# Non-persistent buffers some old checkpoints carry; never parameters.
_IGNORED_SUFFIXES = (".position_ids", ".rotary_emb.inv_freq")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "added_tokens.json", "preprocessor_config.json", "processor_config.json", "chat_template.json",
                    "chat_template.jinja", "generation_config.json")
DEFAULT_MAX_SHARD_BYTES = 5 * 1024 ** 3


# ---- key map ------------------------------------------------------------------------------------------

def normalize_hf_key(key: str) -> str:
    if key.startswith("model.language_model."):
        key = "language_model.model." + key[len("model.language_model."):]
    elif key == "lm_head.weight":
        key = "language_model.lm_head.weight"
    elif key.startswith("model.vision_tower."):
        key = "vision_tower." + key[len("model.vision_tower."):]
    elif key.startswith("model.multi_modal_projector."):
        key = "multi_modal_projector." + key[len("model.multi_modal_projector."):]
    if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
        key = "vision_tower.vision_model." + key[len("vision_tower."):]
    return key


def hf_key(key: str) -> tuple[str, str]:
    """Our param key -> (hub-layout HF key, transform tag). Tags: 'linear' (transpose), 'conv' (OIHW <-> HWIO),
    'none'."""
    parts = key.split("/")
    head, rest, leaf = parts[0], parts[1:-1], parts[-1]
    prefix = {"vision_tower": "vision_tower.vision_model", "projector": "multi_modal_projector",
              "language_model": "language_model.model", "lm_head": "language_model.lm_head"}[head]
    if head == "vision_tower" and rest and rest[0] == "layers":
        rest = ["encoder"] + rest
    tag = "none"
    if leaf == "kernel":
        leaf, tag = "weight", "linear"
    elif leaf == "embedding":  # nnx.Embed
        leaf = "weight"
    elif leaf == "patch_embedding":
        rest, leaf, tag = rest + ["patch_embedding"], "weight", "conv"
    elif leaf == "position_embedding":
        rest, leaf = rest + ["position_embedding"], "weight"
    key = ".".join([prefix] + rest + [leaf]) if head != "lm_head" else f"{prefix}.{leaf}"
    return key, tag


def to_ours(x: np.ndarray, tag: str) -> np.ndarray:
    if tag == "linear":
        return x.T
    if tag == "conv":
        return x.transpose(2, 3, 1, 0)
    return x


def to_hf(x: np.ndarray, tag: str) -> np.ndarray:
    if tag == "linear":
        return x.T
    if tag == "conv":
        return x.transpose(3, 2, 0, 1)
    return x


def hf_shape(shape: tuple, tag: str) -> tuple:
    if tag == "linear":
        return tuple(reversed(shape))
    if tag == "conv":
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(shape)


def abstract_model(config: LlavaConfig):
    """(graphdef, {key: ShapeDtypeStruct}) without allocating any weights; each param in its storage dtype. Kept
    per config (tracing a 7B model's init takes seconds; the planner and the stages ask for it repeatedly)."""
    graphdef, out = _abstract_model(config)
    return graphdef, dict(out)


@functools.lru_cache(maxsize=16)
def _abstract_model(config: LlavaConfig):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Llava(config, rngs=nnx.Rngs(0))))
    out = {key_of(path): v.get_value() for path, v in nnx.to_flat_state(state)}
    for key, dt in config.param_dtype_overrides:
        if key not in out:
            raise CheckpointError(f"param_dtype_overrides names {key!r}, which is not a param of the model")
        out[key] = jax.ShapeDtypeStruct(out[key].shape, to_jnp_dtype(dt))
    return graphdef, out


# ---- reading ------------------------------------------------------------------------------------------

def weight_files(hf_dir: str) -> list[str]:
    """The safetensors files of an HF folder (sharded via the index, or single). Pickled weights are refused."""
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e!r})") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not os.path.isfile(os.path.join(hf_dir, f))]
        if missing:
            raise CheckpointError(f"{index}: lists shard files that do not exist: {missing}")
        return [os.path.join(hf_dir, f) for f in files]
    single = os.path.join(hf_dir, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    others = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
    if others:
        return others
    pickled = [os.path.basename(p) for p in glob.glob(os.path.join(hf_dir, "*.bin"))
               + glob.glob(os.path.join(hf_dir, "*.pt")) + glob.glob(os.path.join(hf_dir, "*.pth"))]
    if pickled:
        raise CheckpointError(
            f"{hf_dir}: only pickled weights found ({', '.join(pickled)}); refusing to load them (unpickling runs "
            "arbitrary code). Convert them to safetensors first, e.g. with transformers' save_pretrained("
            "safe_serialization=True) in a trusted environment.")
    raise CheckpointError(f"{hf_dir}: no safetensors weights (model.safetensors or an index) found")


def _summarise(title: str, items: list[str], limit: int = 25) -> str:
    shown = "\n    ".join(items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n    {shown}{more}"


def _wanted(config: LlavaConfig) -> dict[str, tuple]:
    """hub-layout HF key -> (our key, transform tag, ShapeDtypeStruct)."""
    graphdef, abstract = abstract_model(config)
    return {hf_key(k)[0]: (k, hf_key(k)[1], sds) for k, sds in abstract.items()}


def stored_dtypes(files: list[str], config: LlavaConfig) -> dict[str, str]:
    """{our key: dtype name} of the model's tensors as the files store them (keys the model does not have are left
    to the loader to report)."""
    wanted = _wanted(config)
    out = {}
    for p in files:
        h = SafetensorsFile(p)
        for raw in h.keys():
            key = normalize_hf_key(raw)
            if key in wanted:
                out[wanted[key][0]] = h.dtype(raw)
        h.close()
    return out


def read_model_config(hf_dir: str | os.PathLike, dtype: str = "float32", param_dtype: str | None = None
                      ) -> LlavaConfig:
    """config.json with the params' storage dtypes: every param in `param_dtype` when given, else each tensor in the
    dtype the weight files store it in ("as stored": fp16 hub weights stay fp16)."""
    hf_dir = os.fspath(hf_dir)
    if param_dtype:
        return read_hf_config(hf_dir, dtype=dtype, param_dtype=param_dtype)
    config = read_hf_config(hf_dir, dtype=dtype, param_dtype="float32")
    return config.with_storage_dtypes(stored_dtypes(weight_files(hf_dir), config))


def load_params_from_safetensors(files: list[str], config: LlavaConfig,
                                 sharding_fn: Callable[[str, tuple], jax.sharding.Sharding] | None = None):
    """Stream HF tensors into {key: jax.Array}, each in its storage dtype (`config.storage_dtype`; a tensor already
    in it is not converted: bitwise the file's). Checks every key and shape first, raising one CheckpointError that
    lists all missing, unexpected and mis-shaped tensors."""
    graphdef, _ = abstract_model(config)
    wanted = _wanted(config)
    found: dict[str, tuple[SafetensorsFile, str]] = {}
    handles = [SafetensorsFile(p) for p in files]
    try:
        unexpected, bad_shape = [], []
        for h in handles:
            for raw in h.keys():
                key = normalize_hf_key(raw)
                if key.endswith(_IGNORED_SUFFIXES):
                    continue
                if key == "language_model.lm_head.weight" and config.tie_word_embeddings:
                    continue  # tied to embed_tokens; some writers still store it
                if key not in wanted:
                    unexpected.append(f"{raw} (in {os.path.basename(h.path)})")
                    continue
                _, tag, sds = wanted[key]
                expect = hf_shape(sds.shape, tag)
                if h.shape(raw) != expect:
                    bad_shape.append(f"{raw}: file has {list(h.shape(raw))}, model expects {list(expect)}")
                found[key] = (h, raw)
        missing = [k for k in wanted if k not in found]
        if missing or unexpected or bad_shape:
            parts = [f"weights in {os.path.dirname(files[0]) or '.'} do not match the model config:"]
            if missing:
                parts.append(_summarise("missing keys", missing))
            if unexpected:
                parts.append(_summarise("unexpected keys", unexpected))
            if bad_shape:
                parts.append(_summarise("shape mismatches", bad_shape))
            raise CheckpointError("\n".join(parts))
        params = {}
        for key, (ours, tag, sds) in wanted.items():
            h, raw = found[key]
            x = np.array(to_ours(h.get(raw), tag), dtype=sds.dtype, copy=True)  # owned, contiguous
            sharding = sharding_fn(ours, x.shape) if sharding_fn is not None else None
            params[ours] = jax.device_put(x, sharding) if sharding is not None else jnp.asarray(x)
            del x
        return graphdef, params
    finally:
        for h in handles:
            h.close()


def model_from_flat_params(graphdef, params: dict) -> Llava:
    """{key: array} (any dtype per param) -> the model."""
    state = nnx.from_flat_state([(path_of(k), nnx.Param(v)) for k, v in params.items()])
    return nnx.merge(graphdef, state)


def load_hf(hf_dir: str | os.PathLike, dtype: str = "float32", param_dtype: str | None = None,
            sharding_fn=None) -> Llava:
    """HF LLaVA folder (config.json + safetensors) -> our model. `dtype` is the compute dtype; `param_dtype` the
    storage dtype of every weight, or None: each as the files store it (`read_model_config`)."""
    hf_dir = os.fspath(hf_dir)
    config = read_model_config(hf_dir, dtype=dtype, param_dtype=param_dtype)
    graphdef, params = load_params_from_safetensors(weight_files(hf_dir), config, sharding_fn)
    return model_from_flat_params(graphdef, params)


# ---- writing ------------------------------------------------------------------------------------------

def flat_params(model: Llava) -> dict:
    """The model's params as {key: array}."""
    return {key_of(path): v.get_value() for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def write_hf_weights(params: dict, config: LlavaConfig, folder: str,
                     max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, dtype: str | None = None) -> None:
    """Write {key: array} as HF safetensors (sharded with an index when larger than max_shard_bytes): every tensor
    in `dtype` when given, else in its storage dtype (`config.storage_dtype`), so a param that was never trained
    is written bitwise as it was read."""
    entries = []
    for ours in sorted(params, key=lambda k: hf_key(k)[0]):
        key, tag = hf_key(ours)
        dt = np.dtype(to_jnp_dtype(dtype or config.storage_dtype(ours)))
        entries.append((key, hf_shape(tuple(params[ours].shape), tag), dt, ours, tag))
    shards, cur, cur_bytes = [], [], 0
    for e in entries:
        nbytes = int(np.prod(e[1], dtype=np.int64)) * e[2].itemsize
        if cur and cur_bytes + nbytes > max_shard_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(e)
        cur_bytes += nbytes
    shards.append(cur)

    def tensors(shard):
        for _, _, dt, path, tag in shard:
            yield np.asarray(to_hf(np.asarray(jax.device_get(params[path])), tag), dtype=dt)

    if len(shards) == 1:
        write_safetensors(os.path.join(folder, "model.safetensors"), [e[:3] for e in shards[0]], tensors(shards[0]))
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(os.path.join(folder, name), [e[:3] for e in shard], tensors(shard))
        for key, shape, dt, _, _ in shard:
            weight_map[key] = name
            total += int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)


def save_hf_params(params: dict, config: LlavaConfig, out_dir: str | os.PathLike, *,
                   template_hf_dir: str | os.PathLike | None = None, overwrite: bool = False,
                   max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, dtype: str | None = None) -> str:
    if dtype:
        config = config.replace(param_dtype=canonical_dtype(dtype), param_dtype_overrides=())
    with atomic_dir(out_dir, overwrite) as tmp:
        hf_cfg = config_to_hf_dict(config)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_cfg, f, indent=2, sort_keys=True)
        write_hf_weights(params, config, tmp, max_shard_bytes, dtype)
        if template_hf_dir is not None:
            for name in _TOKENIZER_FILES:
                src = os.path.join(os.fspath(template_hf_dir), name)
                if os.path.isfile(src):
                    shutil.copy2(src, os.path.join(tmp, name))
        for name, content in processor_files(config).items():
            if not os.path.isfile(os.path.join(tmp, name)):  # the template's own files win
                with open(os.path.join(tmp, name), "w") as f:
                    json.dump(content, f, indent=2, sort_keys=True)
    return os.path.abspath(os.fspath(out_dir))


def processor_files(config: LlavaConfig) -> dict[str, dict]:
    """preprocessor_config.json (CLIP preprocessing at the model's image size), processor_config.json and
    generation_config.json as llava-hf ships them, for an export whose template lacks them (the embedded world's
    tokenizer folder): `AutoProcessor.from_pretrained` then loads the export, and `generate` stops at its EOS."""
    from vkd_jax.preprocess import ImageProcessorConfig

    size = config.vision.image_size
    image = ImageProcessorConfig(shortest_edge=size, crop_hw=(size, size))
    t = config.text
    return {"preprocessor_config.json": image.to_hf_dict(),
            "processor_config.json": {"processor_class": "LlavaProcessor", "image_token": "<image>",
                                      "patch_size": config.vision.patch_size, "num_additional_image_tokens": 1,
                                      "vision_feature_select_strategy": config.vision_feature_select_strategy},
            "generation_config.json": {"_from_model_config": True, "bos_token_id": t.bos_token_id,
                                       "eos_token_id": t.eos_token_id, "pad_token_id": t.pad_token_id}}


def save_hf(model: Llava, out_dir: str | os.PathLike, *, template_hf_dir=None, overwrite: bool = False,
            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, dtype: str | None = None) -> str:
    """Write `model` as an HF folder that LlavaForConditionalGeneration.from_pretrained loads (atomically)."""
    return save_hf_params(flat_params(model), model.config, out_dir, template_hf_dir=template_hf_dir,
                          overwrite=overwrite, max_shard_bytes=max_shard_bytes, dtype=dtype)
