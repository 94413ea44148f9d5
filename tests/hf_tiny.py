"""Tiny random HF LLaVA models built locally with transformers + torch (no download)."""

from __future__ import annotations

import numpy as np

VOCAB = 96


def tiny_hf_config(*, image_token_index=VOCAB - 1, vision_feature_layer=-2, strategy="default",
                   projector_bias=True, num_kv_heads=2, head_dim=None, tie=False, rope="v5", image_size=30,
                   patch=6, vision_layers=3, text_layers=2, vocab=VOCAB, hidden=64, vhidden=32, attention_bias=False):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    n_patches = (image_size // patch) ** 2
    text_kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden // 2 + 8,
                   num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=num_kv_heads,
                   rms_norm_eps=1e-5, max_position_embeddings=256, tie_word_embeddings=tie,
                   attention_bias=attention_bias, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if head_dim is not None:
        text_kw["head_dim"] = head_dim
    text = LlamaConfig(**text_kw)
    if rope == "v5":
        text.rope_parameters = {"rope_type": "default", "rope_theta": 5000.0}
    vision = CLIPVisionConfig(hidden_size=vhidden, intermediate_size=2 * vhidden + 4, num_hidden_layers=vision_layers,
                              num_attention_heads=4, image_size=image_size, patch_size=patch, projection_dim=16)
    cfg = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=image_token_index,
                      image_seq_length=n_patches + (1 if strategy == "full" else 0),
                      vision_feature_layer=vision_feature_layer, vision_feature_select_strategy=strategy,
                      multimodal_projector_bias=projector_bias, tie_word_embeddings=tie)
    return cfg


def tiny_hf_model(seed=0, **kw):
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    cfg = tiny_hf_config(**kw)
    model = LlavaForConditionalGeneration(cfg).eval()
    # Random init leaves norms at 1/0 and some biases at 0: perturb everything so that every weight matters.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def make_inputs(cfg, batch=2, text_len=7, n_images_rows=(0, 1), pad="none", seed=0, image_token_index=None):
    """input_ids with image blocks in the given rows, pixel values, attention mask (left/right padding)."""
    rng = np.random.default_rng(seed)
    img_tok = cfg.image_token_index if image_token_index is None else image_token_index
    n_img = cfg.image_seq_length
    vocab = cfg.text_config.vocab_size
    rows = []
    for b in range(batch):
        ids = list(rng.integers(3, min(vocab, img_tok) - 1, size=text_len))
        if b in n_images_rows:
            ids = ids[:2] + [img_tok] * n_img + ids[2:]
        rows.append(ids)
    lens = [len(r) for r in rows]
    extra = [0] * batch
    if pad != "none":
        extra = [b * 3 for b in range(batch)]
    total = max(l + e for l, e in zip(lens, extra))
    ids = np.zeros((batch, total), np.int64)
    mask = np.zeros((batch, total), np.int64)
    for b, r in enumerate(rows):
        n = len(r)
        if pad == "left":
            ids[b, total - n:], mask[b, total - n:] = r, 1
        else:
            ids[b, :n], mask[b, :n] = r, 1
    size = cfg.vision_config.image_size
    pixels = rng.standard_normal((len(n_images_rows), 3, size, size)).astype(np.float32)
    return ids, pixels, mask
