"""A tiny LLaVA on the embedded benchmark: trains from scratch on 2 CPU cores in minutes (`make demo`).

The shared fields and their meanings: vkd_jax/config_base.py. Why these values: bench/RESULTS.md, "The tiny
defaults". Variants: `--config configs/tiny.py:method=ga,forget=5,seed=1,steps=50`.
"""

from vkd_jax import config_base


def get_config(arg: str | None = None):
    c = config_base.base()
    c.data.update(dict(
        world=dict(num_people=160, num_celebrities=40, num_facts=4, values_per_fact=12, image_size=32, ft_poses=6,
                   test_poses=2, max_rotation=12.0, max_scale=0.08, max_shift=0.04, num_generic=200,
                   generic_poses=4),
        length_buckets=(56, 72, 96, 128), resample_options=True, cls_answer="option", celebrity_repeat=4))
    c.eval.update(dict(max_new_tokens=24, batch_size=32, retain_max_profiles=40, cls_scoring="likelihood"))
    c.model = dict(  # HF config.json fields; vocab and special ids come from the embedded tokenizer
        model_type="llava",
        vision_config=dict(model_type="clip_vision_model", hidden_size=96, intermediate_size=384, num_hidden_layers=3,
                           num_attention_heads=4, num_channels=3, image_size=32, patch_size=8, layer_norm_eps=1e-5,
                           hidden_act="quick_gelu"),
        text_config=dict(model_type="llama", vocab_size=512, hidden_size=128, intermediate_size=768,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5,
                         rope_theta=10000.0, max_position_embeddings=512, hidden_act="silu",
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        image_token_index=4, image_seq_length=16, vision_feature_layer=-1, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", multimodal_projector_bias=True, tie_word_embeddings=False)
    # VKD on the embedded MLLMU-Bench: retain and generic distillation 100, 400 unlearning steps (every method's),
    # the stated rule's pick over the full-size candidates on the three shipped vanilla models (bench/RESULTS.md,
    # "The default, chosen by the rule"); the embedded CLEAR keeps the earlier 30 / 30 and 100 steps, not re-measured
    mllmu = config_base.apply_variant(config_base.base(), arg).data.benchmark == "mllmu"
    c.vkd.update(dict(b_r=100.0, b_g=100.0) if mllmu else dict(b_r=30.0, b_g=30.0))
    c.stages.unlearn.num_steps = 400 if mllmu else 100
    streams = ("vqa", "qa", "caption")  # caption: the generic images, standing in for LLaVA's pretrained CLIP
    c.stages.pretrain.update(dict(streams=streams, num_steps=450))
    c.stages.vanilla.update(dict(streams=streams, num_steps=1200))
    c.stages.reference.update(dict(streams=streams, num_steps=1200))
    c.splits = 0  # every person forgotten once: the resolution the targets need (bench/RESULTS.md, "Resolution")
    c = config_base.apply_variant(c, arg)
    if c.data.benchmark == "clear":  # the embedded CLEAR (vkd_jax.benchmarks.clear.generator), forget10 by default
        c.data.update(dict(clear_world=dict(num_people=120, images_per_person=6, eval_images=8, num_real_faces=20,
                                            num_real_world=24, num_generic=60, image_size=32),
                           train_tasks=("caption", "recognition", "name_mc", "qa"), length_buckets=(48, 64, 96)))
        c.stages.pretrain.update(dict(num_steps=200, streams=("vqa", "caption")))  # real faces / real world
        # CLEAR's vanilla rows caption the people themselves: no generic caption stream needed after pretraining
        c.stages.vanilla.update(dict(num_steps=1200, streams=("vqa", "qa")))
        c.stages.reference.update(dict(num_steps=1200, streams=("vqa", "qa")))
    return c
