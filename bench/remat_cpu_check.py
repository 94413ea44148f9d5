"""Why the memory plan's XLA `temp` does not fall with remat on CPU, measured on LLaVA-1.5-7B decoder layers.

    python bench/remat_cpu_check.py [--dtype bfloat16|float32]

One v4-8 chip's share of a batch of 32 (8 rows x 641 tokens) runs L = 2 and 4 decoder layers with the 7B widths
and frozen weights; the gradient goes to the input embeddings (as in VKD: through the frozen LLM to the visual
tokens). XLA's CPU temp bytes per layer (the slope from L=2 to L=4) for:
  none      no remat (the model's for-loop)
  loop      remat "full" per block, the model's for-loop (`layers.remat_call`)
  scan      remat "full" per block inside lax.scan (the while loop fixes the order of the recomputes)
What the block saves with remat is its input, 8 x 641 x 4096 x itemsize; with the order fixed the CPU compiler
shows exactly that (float32: 0.078 GiB); in the for-loop it hoists every block's recompute to the start of the
backward pass (it drops the optimization barriers that order them before it schedules).
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
from flax import nnx

from vkd_jax.models.config import TextConfig
from vkd_jax.models.layers import remat_call
from vkd_jax.models.llama import LlamaDecoderLayer, rope_tables

ROWS, T = 8, 641


def temp_gib(layers: int, mode: str, dtype) -> float:
    c = TextConfig()
    graphdef, state = nnx.split(nnx.eval_shape(
        lambda: LlamaDecoderLayer(c, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))))
    stacked = jax.tree.map(lambda v: jax.ShapeDtypeStruct((layers,) + v.shape, v.dtype), state)

    def loss(x, ws):
        cos, sin = rope_tables(c, jnp.broadcast_to(jnp.arange(T), (ROWS, T)), dtype)
        mask = jnp.tril(jnp.ones((T, T), bool))[None, None]

        def block(x, w):
            return nnx.merge(graphdef, w)(x, cos, sin, mask)[0]
        if mode == "scan":
            x, _ = jax.lax.scan(lambda x, w: (jax.checkpoint(block)(x, w), None), x, ws)
        else:
            for i in range(layers):
                m = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], ws))
                x = remat_call(m, "full" if mode == "loop" else "none", x, cos, sin, mask)[0]
        return jnp.sum(x.astype(jnp.float32) ** 2)
    x = jax.ShapeDtypeStruct((ROWS, T, c.hidden_size), dtype)
    return jax.jit(jax.grad(loss)).lower(x, stacked).compile().memory_analysis().temp_size_in_bytes / 2 ** 30


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    dtype = jnp.dtype(ap.parse_args().dtype)
    out = {}
    for mode in ("none", "loop", "scan"):
        two, four = temp_gib(2, mode, dtype), temp_gib(4, mode, dtype)
        out[mode] = {"temp_L2_gib": round(two, 3), "temp_L4_gib": round(four, 3),
                     "per_layer_gib": round((four - two) / 2, 3)}
        print(mode, out[mode], flush=True)
    out["block_input_gib"] = round(ROWS * T * TextConfig().hidden_size * dtype.itemsize / 2 ** 30, 3)
    print(json.dumps({"dtype": dtype.name, **out}))


if __name__ == "__main__":
    main()
