"""A tiny LLaVA for the embedded benchmark: trains from scratch on 2 CPU cores in minutes.

Sizes follow the quick study in shared/spec/synthetic_bench.md (ViT 64x2 on 32 px images with 8 px patches ->
16 image tokens; LM 128x2). The text vocabulary is replaced by the embedded tokenizer's size when it is built.
"""

import ml_collections


def get_config(arg: str | None = None):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.hf_dir = ""  # empty: the tiny model is created (and later trained) in the work directory
    c.dtype = "float32"
    c.param_dtype = "float32"
    c.model = ml_collections.ConfigDict(dict(
        model_type="llava",
        vision_config=dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=256,
                           num_hidden_layers=2, num_attention_heads=4, num_channels=3, image_size=32, patch_size=8,
                           layer_norm_eps=1e-5, hidden_act="quick_gelu"),
        text_config=dict(model_type="llama", vocab_size=512, hidden_size=128, intermediate_size=384,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5,
                         rope_theta=10000.0, max_position_embeddings=512, hidden_act="silu",
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        # LLaVA's feature layer -2 would leave a 2-layer ViT with one layer; the tiny tower uses its last layer.
        image_token_index=3, image_seq_length=16, vision_feature_layer=-1,
        vision_feature_select_strategy="default", projector_hidden_act="gelu", multimodal_projector_bias=True,
        tie_word_embeddings=False,
    ))
    return c
