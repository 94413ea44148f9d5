"""LLaVA-1.5: CLIP vision tower -> 2-layer MLP projector -> Llama, merged at the image-token positions.

Feature taps (what VKD distils), requested by name and computed only when asked for:
  "vision:i"  CLIP hidden_states[i] (HF indexing: 0 = embeddings after pre_layrnorm; negative allowed) [N, 1+P, Dv]
  "projector" the projector output, i.e. the visual tokens entering the LLM                          [N, F, D]
  "llm:j"     LLM hidden_states[j] (0 = input embeddings, j = after decoder layer j, before the final norm)
              gathered at the image-token positions, in row-major order                             [N, F, D]
An `llm:j` tap with compute_logits=False runs only decoder layers 1..j.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vkd_jax.models.clip import CLIPVisionTower
from vkd_jax.models.config import LlavaConfig, to_jnp_dtype
from vkd_jax.models.layers import activation, linear
from vkd_jax.models.llama import KVCache, LlamaModel, init_cache


class LlavaOutput(NamedTuple):
    logits: jax.Array | None
    features: dict
    cache: KVCache | None


class Projector(nnx.Module):
    def __init__(self, c: LlavaConfig, *, dtype, param_dtype, rngs):
        din = c.vision.hidden_size * len(c.feature_layers)
        kw = dict(bias=c.multimodal_projector_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear_1 = linear(din, c.text.hidden_size, **kw)
        self.linear_2 = linear(c.text.hidden_size, c.text.hidden_size, **kw)
        self.act = activation(c.projector_hidden_act)

    def __call__(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


def parse_taps(taps) -> tuple[tuple[int, ...], bool, tuple[int, ...]]:
    """('vision:-2', 'projector', 'llm:3') -> vision layers, projector?, llm layers; clear error otherwise."""
    vision, llm, proj = [], [], False
    for tap in taps:
        kind, _, idx = tap.partition(":")
        try:
            if kind == "vision" and idx:
                vision.append(int(idx))
            elif kind == "llm" and idx:
                llm.append(int(idx))
            elif tap == "projector":
                proj = True
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"unknown feature tap {tap!r}: use 'vision:i', 'projector' or 'llm:j'") from None
    return tuple(vision), proj, tuple(llm)


class Llava(nnx.Module):
    def __init__(self, config: LlavaConfig, *, rngs: nnx.Rngs):
        dtype, pdtype = to_jnp_dtype(config.dtype), to_jnp_dtype(config.param_dtype)
        kw = dict(dtype=dtype, param_dtype=pdtype, rngs=rngs)
        self.config = config
        self.vision_tower = CLIPVisionTower(config.vision, **kw)
        self.projector = Projector(config, **kw)
        self.language_model = LlamaModel(config.text, **kw)
        if not config.tie_word_embeddings:
            self.lm_head = linear(config.text.hidden_size, config.text.vocab_size, bias=False, **kw)

    # ---- pieces ----------------------------------------------------------------------------------------
    def encode_images(self, pixel_values, vision_taps: tuple[int, ...] = ()):
        """pixel_values [N, C, H, W] (NCHW, as HF and `preprocess_images` give) -> ([N, F, D], {i: vision hs})."""
        c = self.config
        hs = self.vision_tower.hidden_states(pixel_values, tuple(c.feature_layers) + tuple(vision_taps))
        sel = [hs[i] for i in c.feature_layers]
        if c.vision_feature_select_strategy == "default":
            sel = [h[:, 1:] for h in sel]
        feats = self.projector(jnp.concatenate(sel, axis=-1) if len(sel) > 1 else sel[0])
        return feats, {i: hs[i] for i in vision_taps}

    def logits_from_hidden(self, h):
        h = self.language_model.norm(h)
        if self.config.tie_word_embeddings:
            return self.language_model.embed_tokens.attend(h)
        return self.lm_head(h)

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        return init_cache(self.config.text, batch, max_len, dtype or to_jnp_dtype(self.config.dtype))

    # ---- forward ---------------------------------------------------------------------------------------
    def __call__(self, input_ids, pixel_values=None, attention_mask=None, *, position_ids=None):
        return self.forward(input_ids, pixel_values, attention_mask, position_ids=position_ids).logits

    def forward(self, input_ids, pixel_values=None, attention_mask=None, *, position_ids=None, taps=(),
                compute_logits: bool = True, last_logits_only: bool = False, cache: KVCache | None = None,
                image_features=None, logits_at=None) -> LlavaOutput:
        """input_ids [B, T] with `image_seq_length` image tokens per image; pixel_values [N, C, H, W] or None;
        attention_mask [B, T] (or [B, cache_len] when decoding with a cache; default all ones).
        `image_features` [N, F, D] may replace pixel_values (precomputed projector output).
        `last_logits_only`: logits [B, 1, V] at the last slot only (a decoding prefill with left padding needs no
        more; saves the [B, T, V] head matmul).
        `logits_at` [B, K] int positions: logits [B, K, V] at those slots only (training losses need them at the
        answer positions alone; the final norm and the head then cost K/T of a full-length pass)."""
        c = self.config
        input_ids = jnp.asarray(input_ids)
        vision_taps, want_proj, llm_taps = parse_taps(taps)
        features = {}
        is_image = input_ids == c.image_token_index
        if pixel_values is not None and image_features is None:
            image_features, vfeat = self.encode_images(pixel_values, vision_taps)
            features.update({f"vision:{i}": v for i, v in vfeat.items()})
        elif vision_taps:
            raise ValueError("vision taps need pixel_values")
        # Image tokens may lie outside the text vocabulary: embed them as id 0; they are overwritten below.
        embeds = self.language_model.embed_tokens(jnp.where(is_image, 0, input_ids))
        image_pos = None
        if image_features is not None:
            n_feat = image_features.shape[0] * image_features.shape[1]
            check_image_token_count(input_ids, c.image_token_index, n_feat)
            if want_proj:
                features["projector"] = image_features
            flat_img = is_image.reshape(-1)
            # i-th image token (row-major over the batch) takes the i-th feature vector.
            src = jnp.clip(jnp.cumsum(flat_img) - 1, 0, n_feat - 1)
            flat_feats = image_features.reshape(n_feat, -1).astype(embeds.dtype)
            merged = jnp.where(flat_img[:, None], flat_feats[src], embeds.reshape(flat_img.shape[0], -1))
            embeds = merged.reshape(embeds.shape)
            image_pos = jnp.nonzero(flat_img, size=n_feat, fill_value=0)[0]
        elif want_proj or llm_taps:
            raise ValueError("projector/llm taps need pixel_values or image_features")
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, bool)
        n = c.text.num_hidden_layers
        run = None
        if not compute_logits:
            run = max([j % (n + 1) for j in llm_taps], default=0)
        if compute_logits or run:
            h, coll, cache = self.language_model(embeds, attention_mask, position_ids=position_ids, cache=cache,
                                                 num_layers=run, collect=llm_taps)
        else:
            h, coll = None, {j: embeds for j in llm_taps}  # only hidden_states[0] requested
        for j, hs in coll.items():
            shape = image_features.shape[:2] + (hs.shape[-1],)
            features[f"llm:{j}"] = hs.reshape(-1, hs.shape[-1])[image_pos].reshape(shape)
        if compute_logits and last_logits_only:
            h = h[:, -1:]
        elif compute_logits and logits_at is not None:
            h = jnp.take_along_axis(h, jnp.asarray(logits_at)[..., None].astype(jnp.int32), axis=1)
        logits = self.logits_from_hidden(h) if compute_logits else None
        return LlavaOutput(logits, features, cache)


def check_image_token_count(input_ids, image_token_index: int, n_features: int) -> None:
    """Raise a clear error when the image-token count differs from the feature count (concrete inputs only;
    under jit the data pipeline guarantees it, since the count is a data-dependent value)."""
    if isinstance(input_ids, jax.core.Tracer):
        return
    n_tokens = int(np.sum(np.asarray(input_ids) == image_token_index))
    if n_tokens != n_features:
        raise ValueError(f"image tokens and image features do not match: input_ids hold {n_tokens} tokens with "
                         f"id {image_token_index}, the images give {n_features} features")
