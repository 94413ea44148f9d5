"""LLaVA-1.5-7B (CLIP ViT-L/14-336 + Vicuna-7B), real weights converted from Hugging Face.

  python -m vkd_jax.main --config configs/llava7b.py --workdir W --config.hf_dir=/path/to/llava-1.5-7b-hf
"""

import ml_collections


def get_config(arg: str | None = None):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.hf_dir = ""  # local HF folder (config.json + safetensors); nothing is ever downloaded
    c.dtype = "bfloat16"  # compute dtype
    c.param_dtype = "bfloat16"
    c.model = ml_collections.ConfigDict(dict(
        model_type="llava",
        vision_config=dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=24, num_attention_heads=16, num_channels=3, image_size=336,
                           patch_size=14, layer_norm_eps=1e-5, hidden_act="quick_gelu"),
        text_config=dict(model_type="llama", vocab_size=32064, hidden_size=4096, intermediate_size=11008,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-5,
                         rope_theta=10000.0, max_position_embeddings=4096, hidden_act="silu",
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=32001),
        image_token_index=32000, image_seq_length=576, vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu", multimodal_projector_bias=True,
        tie_word_embeddings=False,
    ))
    return c
