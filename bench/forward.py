"""Our jit forward vs the transformers (torch, eager) forward on the same weights, CPU, batch 8.

  python bench/forward.py [--batch 8] [--repeats 7] [--write bench/RESULTS.md]

Reports time per forward (median of `repeats`), the torch/ours ratio, and achieved matmul FLOP/s (counted from
the shapes) against this machine's measured fp32 matmul peak. Targets: never slower than torch eager; >= 70% of the
peak on the ~50M config.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.common import append_section, llava_forward_flops, machine, matmul_peak_flops, median_time  # noqa: E402

TEXT_LEN = 32

# ~50M parameters with a few hundred image tokens (224 px / 14 px patches = 256). Wide and shallow on purpose:
# its GEMMs (768-wide LLM, 512-wide ViT) are closer in shape to LLaVA-7B's than a narrow deep model's would be.
MODEL_50M = dict(
    model_type="llava",
    vision_config=dict(model_type="clip_vision_model", hidden_size=512, intermediate_size=2048, num_hidden_layers=4,
                       num_attention_heads=8, image_size=224, patch_size=14, hidden_act="quick_gelu"),
    text_config=dict(model_type="llama", vocab_size=6000, hidden_size=768, intermediate_size=2048,
                     num_hidden_layers=4, num_attention_heads=12, num_key_value_heads=12, rms_norm_eps=1e-5,
                     max_position_embeddings=1024),
    image_token_index=5999, image_seq_length=256, vision_feature_layer=-2,
)


def tiny_model_dict():
    from vkd_jax.config_base import load_config

    return load_config(os.path.join(ROOT, "configs", "tiny.py")).model.to_dict()


def bench_one(name: str, model_dict: dict, batch: int, repeats: int) -> dict:
    import jax
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    import vkd_jax

    torch.manual_seed(0)
    hf = LlavaForConditionalGeneration(LlavaConfig(**model_dict)).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model = vkd_jax.load_hf(d)
    c = model.config
    rng = np.random.default_rng(0)
    text = rng.integers(4, c.text.vocab_size, size=(batch, TEXT_LEN))
    text[text == c.image_token_index] = 4
    ids = np.concatenate([text[:, :2], np.full((batch, c.image_seq_length), c.image_token_index), text[:, 2:]], 1)
    px = rng.standard_normal((batch, 3, c.vision.image_size, c.vision.image_size)).astype(np.float32)
    mask = np.ones_like(ids)

    fwd = jax.jit(lambda m, i, p, a: m(i, p, a))
    ids_j, px_j, mask_j = jax.device_put(ids), jax.device_put(px), jax.device_put(mask)
    ours = median_time(lambda: fwd(model, ids_j, px_j, mask_j).block_until_ready(), repeats)
    t_ids, t_px, t_mask = torch.tensor(ids), torch.tensor(px), torch.tensor(mask)

    def torch_fwd():
        with torch.inference_mode():
            hf(input_ids=t_ids, pixel_values=t_px, attention_mask=t_mask)

    theirs = median_time(torch_fwd, repeats)
    flops = llava_forward_flops(c, batch, TEXT_LEN)
    n_params = sum(p.numel() for p in hf.parameters())
    return dict(name=name, params=n_params, seq=ids.shape[1], ours=ours, torch=theirs, flops=flops)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--write", default=None, help="results file to update (section 'Forward (issue 2)')")
    a = p.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count())
    peak = matmul_peak_flops()
    rows = [bench_one("tiny", tiny_model_dict(), a.batch, a.repeats),
            bench_one("~50M", MODEL_50M, a.batch, a.repeats)]
    lines = [f"`python bench/forward.py --write bench/RESULTS.md` on {machine()}; batch {a.batch}, fp32, "
             f"{TEXT_LEN} text tokens + the image tokens per row, torch threads = {os.cpu_count()} (XLA uses all "
             f"cores). Times are medians of {a.repeats} runs after warm-up. Measured fp32 matmul peak "
             f"(2048^3): XLA {peak['xla'] / 1e9:.1f} GFLOP/s, torch {peak.get('torch', 0) / 1e9:.1f} GFLOP/s; "
             f"peak = {peak['peak'] / 1e9:.1f} GFLOP/s.", "",
             "| config | params | seq | ours (ms) | torch eager (ms) | torch/ours | ours GFLOP/s | % of peak |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gf = r["flops"] / r["ours"]
        lines.append(f"| {r['name']} | {r['params'] / 1e6:.2f}M | {r['seq']} | {r['ours'] * 1e3:.1f} | "
                     f"{r['torch'] * 1e3:.1f} | {r['torch'] / r['ours']:.2f}x | {gf / 1e9:.1f} | "
                     f"{100 * gf / peak['peak']:.0f}% |")
    body = "\n".join(lines)
    print(body)
    if a.write:
        append_section(a.write, "Forward (issue 2)", body)


if __name__ == "__main__":
    main()
