"""The cost formulas of the pipeline plan (vkd_jax.plan_pipeline): a train step's matmul FLOPs and memory traffic,
evaluation's memory and time, the layer-slope extrapolation, the models a stage keeps alive."""

from __future__ import annotations

import dataclasses
import math

from vkd_jax.plan import Platform

MFU = 0.4      # training and prefill: model FLOP/s utilisation assumed
BW_EFF = 0.6   # decoding: fraction of peak memory bandwidth assumed


def with_layers(mc, text: int, vision: int):
    """The model config with `text` decoder and `vision` encoder layers (the same widths)."""
    return mc.replace(text=dataclasses.replace(mc.text, num_hidden_layers=text),
                      vision=dataclasses.replace(mc.vision, num_hidden_layers=vision))


def by_layer_slopes(mc, f, base_vision: int = 2) -> float:
    """f(model config) at the config's depth, from three shallow proxies: a transformer's activations and FLOPs
    are linear in its layer counts, f(T, V) = f(2, 2) + (T - 2) (f(3, 2) - f(2, 2)) + (V - 2) (f(2, 3) - f(2, 2)),
    so a 7B stage costs three 2-3 layer traces instead of one of the whole model. `base_vision`: the proxies'
    vision depth (k + 1 for a partition that trains the last k blocks: below that every block trains). Models no
    deeper than the proxies are traced as they are."""
    t, v, bv = mc.text.num_hidden_layers, mc.vision.num_hidden_layers, base_vision
    if t <= 3 and v <= bv + 1:
        return f(mc)
    base = f(with_layers(mc, 2, bv))
    return (base + (t - 2) * (f(with_layers(mc, 3, bv)) - base) + (v - bv) * (f(with_layers(mc, 2, bv + 1)) - base))


def resident(models: int, p: Platform, sizes: dict) -> int:
    """Bytes of `models` other whole models a device holds during a stage: none in a one-process run (they wait in host
    memory: run_models.host_params), all of them (full size, the worst device) with several processes."""
    return models * sizes["bytes"] if p.hosts > 1 else 0


def base_vision(cfg, preset: str) -> int:
    """The proxies' vision depth for by_layer_slopes: k + 1 when the partition trains the last k blocks."""
    return max(2, int(cfg.partition.vit_last_k) + 1) if preset == "visual_last_k" else 2


def step_flops(ps) -> float:
    """Matmul FLOPs of one train step (global): vkd_jax.flops.dot_flops on the built step's jaxpr, traced on
    abstract values (remat recompute included)."""
    import jax

    from vkd_jax.flops import dot_flops
    b = ps.built
    return dot_flops(jax.make_jaxpr(b.step)(b.abstract_state, ps.batch, b.abstract_frozen, b.abstract_aux).jaxpr)


def step_bytes_moved(b: dict, remat: str) -> float:
    """One device's memory traffic in a train step (a lower bound: fused kernels, no spills): every weight read
    in the forward and the backward pass (and once more to recompute, with remat; the stop-gradient teacher or
    reference once), the saved activations written
    and read once, the trainable params, their gradients and the optimizer state read and written once."""
    weights = b["params_trainable"] + b["params_frozen"]  # the teacher / reference: read once, forward only
    return float((3 if remat != "none" else 2) * weights + b.get("teacher", 0) + 2 * b["saved_activations"]
                 + 2 * (2 * b["params_trainable"] + b["opt_state"]))


def model_sizes(mc) -> dict:
    """Parameter count and bytes (storage dtype), and the visual side's count."""
    import numpy as np

    from vkd_jax.models.hf_io import abstract_model
    ab = abstract_model(mc)[1]
    return {"count": int(sum(math.prod(s.shape) for s in ab.values())),
            "bytes": int(sum(math.prod(s.shape) * np.dtype(s.dtype).itemsize for s in ab.values())),
            "visual": int(sum(math.prod(s.shape) for k, s in ab.items()
                              if k.startswith(("vision_tower/", "projector/"))))}


def eval_len(seq: int) -> int:
    """The prompt length the evaluator pads a batch to: its smallest length bucket that holds `seq` tokens."""
    from vkd_jax.benchmarks.mllmu.protocol import EvalConfig
    return min((b for b in EvalConfig().length_buckets if b >= seq), default=seq)


def eval_bytes(mc, sizes: dict, cfg, seq: int) -> dict:
    """One device's memory while it decodes a batch: the whole model (storage dtype), the KV cache of the padded
    prompt and the new tokens, the prefill's attention scores and probabilities (float32), one MLP's
    activations (the logits: the last slot only)."""
    import numpy as np

    from vkd_jax.models.config import to_jnp_dtype
    t, b, new, n = mc.text, int(cfg.eval.batch_size), int(cfg.eval.max_new_tokens), eval_len(seq)
    act = np.dtype(to_jnp_dtype(mc.dtype)).itemsize
    kv_heads = getattr(t, "num_key_value_heads", None) or t.num_attention_heads
    head_dim = t.hidden_size // t.num_attention_heads
    return {"params": sizes["bytes"],
            "kv_cache": 2 * t.num_hidden_layers * b * (n + new) * kv_heads * head_dim * act,
            "attention": 2 * b * t.num_attention_heads * n * (n + new) * 4,
            "activations": 2 * b * n * t.intermediate_size * act}


def eval_seconds(sizes: dict, kv_bytes: int, prompts: int, cfg, seq: int, platform: Platform) -> float:
    """Prompts on one device: prefill at MFU of its peak, each new token reading the weights and the KV cache."""
    b, new = int(cfg.eval.batch_size), int(cfg.eval.max_new_tokens)
    batches = -(-prompts // b)
    prefill = 2 * sizes["count"] * b * eval_len(seq) / (platform.peak_tflops * 1e12 * MFU)
    decode = new * (sizes["bytes"] + kv_bytes) / (platform.hbm_gbps * 1e9 * BW_EFF)
    return batches * (prefill + decode)
