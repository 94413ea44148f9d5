"""LLaVA-1.5-7B (CLIP ViT-L/14-336 + Vicuna-7B) from a local Hugging Face folder, on a local MLLMU-Bench download.

  python -m vkd_jax.main --config configs/llava7b.py --workdir W --config.hf_dir=/path/to/llava-1.5-7b-hf \
      --config.data.manual_dir=/path/to/MLLMU-Bench [--config.stages.vanilla.num_steps=0]
  python -m vkd_jax.main --config configs/llava7b.py:benchmark=clear,forget=10 --workdir W \
      --config.hf_dir=... --config.data.manual_dir=/path/to/CLEAR

The shared fields and their meanings: vkd_jax/config_base.py; the memory plan behind `remat`: docs/scale.md "Pods and
clusters". `model` is LLaVA-1.5-7B's config.json (the memory plan reads it; a run reads hf_dir's own).
"""

from vkd_jax import config_base


def get_config(arg: str | None = None):
    c = config_base.base()
    c.forget_ratio = 5
    c.export_hf = True
    c.dtype, c.param_dtype = "bfloat16", ""   # compute in bf16; store every tensor as hf_dir does (fp16)
    c.remat = "full"
    c.data.update(dict(source="local", batch_size=4, max_len=1024, num_threads=8, train_tasks=("ft",)))
    c.model = dict(
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
        tie_word_embeddings=False)
    c.partition.vit_last_k = 4
    for stage in c.stages.values():
        stage.optim.lr = 2e-5
    c.checkpoint.every_steps = 200
    c.mask.num_batches = 32
    # the public baselines' setting: LoRA on the LLM's linear layers (VKD: the visual side, LLM frozen)
    c.method_partition.update(dict(ga="lora_llm", gd="lora_llm", kl="lora_llm", npo="lora_llm", idk="lora_llm"))
    c.stages.vanilla.update(dict(partition="lora_llm", num_steps=2000))  # 0: bring MLLMU-Bench's vanilla model
    c.stages.reference.update(dict(partition="lora_llm", num_steps=2000))
    # MMUnlearner's saliency mask over the vision modules (its "vision" choice): with "full" (both) neither its masks
    # (computed on one device) nor its Adam state for every parameter fit one GPU or a v4-8 chip (docs/pipeline_plan.md)
    c.method_partition.mmunlearner = "visual"
    c.stages.unlearn.num_steps = 500
    # the attack trains the visual side at full rank and LoRA on the LLM: every parameter any method here changes
    # (VKD and MMUnlearner: the visual side; the baselines: the same LoRA), so every unlearned model's vanilla
    # point is within its reach; "full" is the stronger attack where it fits (8 x 80 GB with an FSDP mesh)
    c.stages.relearn.update(dict(num_steps=100, partition="visual_lora_llm"))
    c = config_base.apply_variant(c, arg)
    if c.data.benchmark == "clear":  # captions and text QA, as CLEAR's vanilla model is fine-tuned
        c.data.train_tasks = ("caption", "qa")
        c.stages.vanilla.streams = c.stages.reference.streams = ("vqa", "qa")
    return c
