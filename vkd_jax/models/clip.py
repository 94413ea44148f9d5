"""CLIP vision tower as HF's CLIPVisionModel computes it (without the pooler, which LLaVA never uses)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vkd_jax.models.config import VisionConfig
from vkd_jax.models.layers import LayerNorm, activation, constrain, dot_product_attention, linear, remat_call


class CLIPEmbeddings(nnx.Module):
    def __init__(self, c: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        self.patch_embedding = nnx.Param(  # HWIO, no bias
            init(rngs.params(), (c.patch_size, c.patch_size, c.num_channels, c.hidden_size), param_dtype))
        self.class_embedding = nnx.Param(init(rngs.params(), (c.hidden_size,), param_dtype))
        self.position_embedding = nnx.Param(init(rngs.params(), (c.num_patches + 1, c.hidden_size), param_dtype))
        self.patch_size, self.dtype = c.patch_size, dtype

    def __call__(self, pixel_values_nchw):
        x = jnp.transpose(pixel_values_nchw, (0, 2, 3, 1)).astype(self.dtype)  # NHWC
        p = self.patch_size
        patches = jax.lax.conv_general_dilated(
            x, self.patch_embedding[...].astype(self.dtype), window_strides=(p, p), padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        b = patches.shape[0]
        patches = patches.reshape(b, -1, patches.shape[-1])
        cls = jnp.broadcast_to(self.class_embedding[...].astype(self.dtype), (b, 1, patches.shape[-1]))
        return jnp.concatenate([cls, patches], axis=1) + self.position_embedding[...].astype(self.dtype)[None]


class CLIPAttention(nnx.Module):
    def __init__(self, c: VisionConfig, *, dtype, param_dtype, rngs):
        kw = dict(bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d = c.hidden_size
        self.q_proj, self.k_proj, self.v_proj = (linear(d, d, **kw) for _ in range(3))
        self.out_proj = linear(d, d, **kw)
        self.num_heads, self.head_dim = c.num_attention_heads, c.head_dim

    def __call__(self, x):
        b, t, _ = x.shape

        def split(y):
            return constrain(y.reshape(b, t, self.num_heads, self.head_dim), "batch", None, "heads", None)
        out = dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)), None,
                                    self.head_dim ** -0.5)
        return self.out_proj(out.reshape(b, t, -1))


class CLIPMLP(nnx.Module):
    def __init__(self, c: VisionConfig, *, dtype, param_dtype, rngs):
        kw = dict(bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = linear(c.hidden_size, c.intermediate_size, **kw)
        self.fc2 = linear(c.intermediate_size, c.hidden_size, **kw)
        self.act = activation(c.hidden_act)

    def __call__(self, x):
        return self.fc2(self.act(constrain(self.fc1(x), "batch", None, "mlp")))


class CLIPEncoderLayer(nnx.Module):
    def __init__(self, c: VisionConfig, *, dtype, param_dtype, rngs):
        norm = dict(dtype=dtype, param_dtype=param_dtype)
        self.layer_norm1 = LayerNorm(c.hidden_size, c.layer_norm_eps, **norm)
        self.self_attn = CLIPAttention(c, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layer_norm2 = LayerNorm(c.hidden_size, c.layer_norm_eps, **norm)
        self.mlp = CLIPMLP(c, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPVisionTower(nnx.Module):
    """hidden_states[0] = embeddings after `pre_layrnorm`, hidden_states[i] = output of encoder layer i."""

    def __init__(self, c: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        norm = dict(dtype=dtype, param_dtype=param_dtype)
        self.embeddings = CLIPEmbeddings(c, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.pre_layrnorm = LayerNorm(c.hidden_size, c.layer_norm_eps, **norm)
        self.layers = nnx.List([CLIPEncoderLayer(c, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                                for _ in range(c.num_hidden_layers)])
        # Kept so that checkpoints round-trip; LLaVA never applies it (features come from hidden_states).
        self.post_layernorm = LayerNorm(c.hidden_size, c.layer_norm_eps, **norm)
        self.num_layers, self.remat = c.num_hidden_layers, c.remat

    def hidden_states(self, pixel_values, wanted: tuple[int, ...]) -> dict[int, jax.Array]:
        """The requested hidden states (HF indexing, negative allowed), running only the layers needed."""
        n = self.num_layers + 1
        idx = sorted({i % n for i in wanted})
        out = {}
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        if 0 in idx:
            out[0] = x
        for i in range(1, (idx[-1] if idx else 0) + 1):
            x = constrain(x, "batch", None, None)
            x = remat_call(self.layers[i - 1], self.remat, x)
            if i in idx:
                out[i] = x
        return {w: out[w % n] for w in wanted}
