"""LLaVA-1.5-13B (CLIP ViT-L/14-336 + Vicuna-13B) from a local Hugging Face folder: configs/llava7b.py with the
13B language model's widths (the vision tower and the projector's input are the same).

  python -m vkd_jax.main --config configs/llava13b.py --workdir W --config.hf_dir=/path/to/llava-1.5-13b-hf \
      --config.data.manual_dir=/path/to/MLLMU-Bench
  python -m vkd_jax.plan --config configs/llava13b.py --pipeline --out plan13b.json   # where every stage fits

`model` is LLaVA-1.5-13B's config.json (the plan reads it; a run reads hf_dir's own). Variants as configs/llava7b.py.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llava7b  # noqa: E402  (the 7B config: everything but the language model's widths)


def get_config(arg: str | None = None):
    c = llava7b.get_config(arg)
    # FSDP: the 13B weights and optimizer state sharded over the chips (replicated, one stage needs more than a v4
    # chip's 32 GiB: `python -m vkd_jax.plan --config configs/llava13b.py --pipeline`)
    c.mesh.update(dict(data=1, fsdp=-1))
    c.model.text_config.update(dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                                    num_attention_heads=40, num_key_value_heads=40))
    return c
