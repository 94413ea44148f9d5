"""Llama decoder as HF's LlamaModel computes it, with an explicit (functional) KV cache.

Positions and masks work in *cache slots*: slot s of row b holds a real token iff attention_mask[b, s].
Query slot q may attend key slot s iff s <= q and the key is real. Position ids count real tokens only
(cumsum of the mask - 1), so left or right padding never changes what a row computes (HF `generate` does the same).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from vkd_jax.models.config import TextConfig
from vkd_jax.models.layers import RMSNorm, activation, constrain, dot_product_attention, linear, remat_call


class KVCache(NamedTuple):
    """Per-layer keys/values, each [layers][B, max_len, kv_heads, head_dim]; `index` = next slot to write."""
    k: tuple
    v: tuple
    index: jax.Array


def init_cache(c: TextConfig, batch: int, max_len: int, dtype) -> KVCache:
    shape = (batch, max_len, c.num_key_value_heads, c.head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(c.num_hidden_layers))
    return KVCache(zeros, tuple(jnp.zeros(shape, dtype) for _ in range(c.num_hidden_layers)),
                   jnp.zeros((), jnp.int32))


def rope_tables(c: TextConfig, positions, dtype):
    """cos/sin [B, T, head_dim] in HF's rotate_half layout (frequencies duplicated, not interleaved)."""
    dim = c.head_dim
    inv_freq = 1.0 / (c.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    if c.rope_type == "linear":
        inv_freq = inv_freq / c.rope_factor
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def _rotate_half(x):
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x, cos, sin):  # x [B, T, H, D]; cos/sin [B, T, D]
    return x * cos[:, :, None] + _rotate_half(x) * sin[:, :, None]


class LlamaAttention(nnx.Module):
    def __init__(self, c: TextConfig, *, dtype, param_dtype, rngs):
        kw = dict(bias=c.attention_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        h, kv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = linear(c.hidden_size, h * d, **kw)
        self.k_proj = linear(c.hidden_size, kv * d, **kw)
        self.v_proj = linear(c.hidden_size, kv * d, **kw)
        self.o_proj = linear(h * d, c.hidden_size, **kw)
        self.h, self.kv, self.d = h, kv, d

    def __call__(self, x, cos, sin, mask, kv_cache=None, offset=None):
        b, t, _ = x.shape
        heads = lambda y, n: constrain(y.reshape(b, t, n, self.d), "batch", None, "heads", None)  # noqa: E731
        q = apply_rope(heads(self.q_proj(x), self.h), cos, sin)
        k = apply_rope(heads(self.k_proj(x), self.kv), cos, sin)
        v = heads(self.v_proj(x), self.kv)
        new_cache = None
        if kv_cache is not None:
            ck, cv = kv_cache
            k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, offset, 0, 0))
            v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, offset, 0, 0))
            new_cache = (k, v)
        out = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, self.d ** -0.5)
        return self.o_proj(out.reshape(b, t, -1)), new_cache


class LlamaMLP(nnx.Module):
    def __init__(self, c: TextConfig, *, dtype, param_dtype, rngs):
        kw = dict(bias=c.mlp_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = linear(c.hidden_size, c.intermediate_size, **kw)
        self.up_proj = linear(c.hidden_size, c.intermediate_size, **kw)
        self.down_proj = linear(c.intermediate_size, c.hidden_size, **kw)
        self.act = activation(c.hidden_act)

    def __call__(self, x):
        h = self.act(constrain(self.gate_proj(x), "batch", None, "mlp")) * constrain(self.up_proj(x), "batch", None,
                                                                                       "mlp")
        return self.down_proj(h)


class LlamaDecoderLayer(nnx.Module):
    def __init__(self, c: TextConfig, *, dtype, param_dtype, rngs):
        norm = dict(dtype=dtype, param_dtype=param_dtype)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, **norm)
        self.self_attn = LlamaAttention(c, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, **norm)
        self.mlp = LlamaMLP(c, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, cos, sin, mask, kv_cache=None, offset=None):
        a, new_cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache, offset)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), new_cache


class LlamaModel(nnx.Module):
    def __init__(self, c: TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.embed_tokens = nnx.Embed(c.vocab_size, c.hidden_size, dtype=dtype, param_dtype=param_dtype,
                                      embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.layers = nnx.List([LlamaDecoderLayer(c, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                                for _ in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.config, self.dtype = c, dtype

    def __call__(self, embeds, attention_mask, *, position_ids=None, cache: KVCache | None = None,
                 num_layers: int | None = None, collect: tuple[int, ...] = ()):
        """embeds [B, T, D]; attention_mask [B, S] bool over key slots (S = T, or the cache length).

        Returns (hidden after the last run layer, {j: hidden_states[j]} for j in `collect`, new cache).
        hidden_states[0] is the input embedding, hidden_states[j] the output of layer j (before the final norm).
        Only `num_layers` layers run when given (used by `llm:j` feature taps).
        """
        b, t, _ = embeds.shape
        n = self.config.num_hidden_layers
        run = n if num_layers is None else num_layers
        offset = cache.index if cache is not None else 0
        mask_bool = attention_mask.astype(bool)
        if position_ids is None:
            pos_all = jnp.maximum(jnp.cumsum(mask_bool.astype(jnp.int32), axis=-1) - 1, 0)
            position_ids = jax.lax.dynamic_slice_in_dim(pos_all, offset, t, axis=1)
        q_slot = offset + jnp.arange(t)
        k_slot = jnp.arange(mask_bool.shape[1])
        mask = (k_slot[None, :] <= q_slot[:, None])[None, None] & mask_bool[:, None, None, :]
        cos, sin = rope_tables(self.config, position_ids, self.dtype)
        wanted = {j % (n + 1) for j in collect}
        collected = {}
        x = embeds.astype(self.dtype)
        if 0 in wanted:
            collected[0] = x
        new_k, new_v = [], []
        for i in range(run):
            x = constrain(x, "batch", None, None)
            kv = (cache.k[i], cache.v[i]) if cache is not None else None
            if kv is None and self.config.remat != "none":
                x, upd = remat_call(self.layers[i], self.config.remat, x, cos, sin, mask)
            else:
                x, upd = self.layers[i](x, cos, sin, mask, kv, offset)
            if upd is not None:
                new_k.append(upd[0]), new_v.append(upd[1])
            if i + 1 in wanted:
                collected[i + 1] = x
        new_cache = None
        if cache is not None:
            new_cache = KVCache(tuple(new_k) + tuple(cache.k[run:]), tuple(new_v) + tuple(cache.v[run:]),
                                cache.index + t)
        return x, {j: collected[j % (n + 1)] for j in collect}, new_cache
