"""Shared benchmark helpers: timing with medians, the machine's measured matmul peak, FLOP counts from shapes."""

from __future__ import annotations

import os
import platform
import statistics
import time


def median_time(fn, repeats: int = 7, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_peak_flops(n: int = 2048, repeats: int = 7) -> dict:
    """fp32 FLOP/s of a large square matmul in XLA and in torch on this machine; the higher is 'the peak'."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    f = jax.jit(lambda x, y: x @ y)
    t_xla = median_time(lambda: f(a, a).block_until_ready(), repeats)
    out = {"xla": 2 * n ** 3 / t_xla}
    try:
        import torch

        ta = torch.randn(n, n)
        t_torch = median_time(lambda: ta @ ta, repeats)
        out["torch"] = 2 * n ** 3 / t_torch
    except ImportError:
        pass
    out["peak"] = max(out.values())
    return out


def matmul_peak_runners(n: int = 2048) -> list[tuple[str, object, float]]:
    """(name, callable, FLOPs) of an n^3 fp32 matmul in XLA and in torch. Time them in the same interleaved rounds
    as the runs whose "% of peak" they divide (a peak measured at another time, under another load, can put a run
    above 100%); `peak_of` turns their times into the peak."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    f = jax.jit(lambda x, y: x @ y)
    out = [("xla", lambda: f(a, a).block_until_ready(), 2.0 * n ** 3)]
    try:
        import torch

        ta = torch.randn(n, n)
        out.append(("torch", lambda: ta @ ta, 2.0 * n ** 3))
    except ImportError:
        pass
    return out


def peak_of(times: dict[str, list[float]], flops: dict[str, float]) -> dict:
    """{"xla", "torch", "peak"} FLOP/s from the interleaved matmul times (medians; the higher is the peak)."""
    out = {k: flops[k] / statistics.median(v) for k, v in times.items() if v}
    out["peak"] = max(out.values())
    return out


def machine() -> str:
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), Python {platform.python_version()}"


def llava_forward_flops(cfg, batch: int, text_len: int) -> float:
    """Matmul FLOPs of one LLaVA forward (images + LLM + lm_head); norms/softmax/elementwise not counted."""
    v, t = cfg.vision, cfg.text
    n_tok = v.num_patches + 1
    vision_layers_run = max(i % (v.num_hidden_layers + 1) for i in cfg.feature_layers)
    per_vlayer = 2 * n_tok * (4 * v.hidden_size ** 2 + 2 * v.hidden_size * v.intermediate_size) \
        + 2 * 2 * n_tok * n_tok * v.hidden_size
    vision = batch * (vision_layers_run * per_vlayer + 2 * v.num_patches * v.patch_size ** 2 * 3 * v.hidden_size)
    f = cfg.image_seq_length
    proj = batch * 2 * f * (v.hidden_size * len(cfg.feature_layers) * t.hidden_size + t.hidden_size ** 2)
    seq = f + text_len
    qkvo = 2 * seq * t.hidden_size * t.head_dim * (2 * t.num_attention_heads + 2 * t.num_key_value_heads)
    mlp = 2 * seq * 3 * t.hidden_size * t.intermediate_size
    attn = 2 * 2 * seq * seq * t.num_attention_heads * t.head_dim
    llm = batch * (t.num_hidden_layers * (qkvo + mlp + attn) + 2 * seq * t.hidden_size * t.vocab_size)
    return float(vision + proj + llm)


def append_section(path: str, title: str, body: str) -> None:
    """Replace the section `## title` of a results file (or append it), keeping every other section."""
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    head = f"## {title}"
    start = text.find(head)
    if start >= 0:
        nxt = text.find("\n## ", start + len(head))
        text = text[:start] + text[nxt + 1:] if nxt >= 0 else text[:start]
    text = text.rstrip("\n") + "\n\n" + head + "\n\n" + body.strip("\n") + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
