"""Tiny random LLaVA, synthetic forget/retain batches and a resumable stream for the unlearning tests."""

from __future__ import annotations

import ml_collections
import numpy as np
from flax import nnx

from vkd_jax.models.config import config_from_model_dict
from vkd_jax.models.hf_io import flat_params
from vkd_jax.models.llava import Llava

VOCAB, IMG_TOK, N_IMG = 64, 63, 4


def tiny_config(vision_layers=2, dtype="float32"):
    d = dict(model_type="llava",
             vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=vision_layers,
                                num_attention_heads=2, image_size=16, patch_size=8, hidden_act="quick_gelu"),
             text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                              pad_token_id=0, bos_token_id=1, eos_token_id=2),
             image_token_index=IMG_TOK, image_seq_length=N_IMG, vision_feature_layer=-1,
             vision_feature_select_strategy="default", tie_word_embeddings=False)
    return config_from_model_dict(d, dtype=dtype, param_dtype=dtype)


def tiny_params(seed=0, **kw):
    cfg = tiny_config(**kw)
    return cfg, flat_params(Llava(cfg, rngs=nnx.Rngs(seed)))


def make_batch(rng: np.random.Generator, b=4, t=12, image=True, answer=3):
    """Right-padded rows: [BOS, (image tokens), prompt..., answer..., EOS, pad...]."""
    ids = np.zeros((b, t), np.int32)
    att = np.zeros((b, t), np.int32)
    lm = np.zeros((b, t), np.float32)
    for r in range(b):
        n = t - int(rng.integers(0, 3))
        row = [1] + ([IMG_TOK] * N_IMG if image else []) + list(rng.integers(4, 60, n - 1 - (N_IMG if image else 0)))
        row[n - 1] = 2
        ids[r, :n], att[r, :n] = row[:n], 1
        lm[r, n - 1 - answer:n] = 1
    out = {"input_ids": ids, "attention_mask": att, "positions": np.maximum(np.cumsum(att, 1) - 1, 0).astype(np.int32),
           "labels": np.where(lm > 0, ids, 0).astype(np.int32), "loss_mask": lm, "valid": np.ones(b, bool),
           "has_image": np.full(b, image)}
    if image:
        out["pixel_values"] = rng.normal(size=(b, 3, 16, 16)).astype(np.float32)
    return out


class Stream:
    """Deterministic infinite batch stream with grain-like get_state/set_state."""

    def __init__(self, seed, **kw):
        self.seed, self.kw, self.i = seed, kw, 0

    def __iter__(self):
        return self

    def __next__(self):
        b = make_batch(np.random.default_rng([self.seed, self.i]), **self.kw)
        self.i += 1
        return b

    def get_state(self):
        return {"i": self.i}

    def set_state(self, st):
        self.i = int(st["i"])


def pcfg(preset="visual", **kw):
    return ml_collections.ConfigDict(dict(preset=preset, vit_last_k=kw.pop("vit_last_k", 1),
                                          num_vit_layers=kw.pop("num_vit_layers", 2),
                                          lora=dict(rank=4, alpha=8.0, dropout=0.0), frozen_dtype="", **kw))


def ocfg(**kw):
    d = dict(lr=1e-2, schedule="constant", warmup_steps=0, clip_norm=1.0, weight_decay=0.0, grad_accum=1,
             max_skipped_steps=2)
    d.update(kw)
    return ml_collections.ConfigDict(d)
