"""Regenerate the golden tiny LLaVA and its torch logits (needs torch + transformers; run by hand only).

  python tests/golden/make_golden.py
"""

import os
import shutil
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from conftest import make_inputs, tiny_hf_model  # noqa: E402


def main():
    hf = tiny_hf_model(seed=123, vocab=48, hidden=32, vhidden=16, vision_layers=2, text_layers=2, image_size=24,
                       patch=6, image_token_index=47)
    out = os.path.join(HERE, "tiny_llava")
    shutil.rmtree(out, ignore_errors=True)
    hf.save_pretrained(out)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(out, extra)):
            os.remove(os.path.join(out, extra))
    ids, px, mask = make_inputs(hf.config, batch=2, n_images_rows=(0, 1), pad="right", seed=5)
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(px),
                    attention_mask=torch.tensor(mask)).logits.numpy()
    np.savez_compressed(os.path.join(HERE, "tiny_llava_logits.npz"), input_ids=ids, pixel_values=px,
                        attention_mask=mask, logits=logits)


if __name__ == "__main__":
    main()
