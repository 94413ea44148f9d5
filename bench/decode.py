"""Batched greedy decoding: ours (`vkd_jax.eval.decode`, one jitted while_loop with the KV cache) against
transformers `generate(do_sample=False)` (torch, eager) on the same random LLaVA weights and the same left-padded
prompts, on the CPU. Both must produce the same tokens; the table gives the steady-state time of one batch.

    python bench/decode.py [--batch 8] [--max_new_tokens 50] [--append bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

# (name, text config, vision config (image size, patch, hidden, layers))
SIZES = {
    "tiny": dict(text=dict(hidden=128, inter=384, layers=2, heads=4, vocab=512),
                 vision=dict(image=32, patch=8, hidden=64, layers=2)),
    "small": dict(text=dict(hidden=512, inter=1376, layers=4, heads=8, vocab=32064),
                  vision=dict(image=112, patch=14, hidden=256, layers=4)),
}


def build_hf(size: str, seed: int = 0):
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    t, v = SIZES[size]["text"], SIZES[size]["vision"]
    text = LlamaConfig(vocab_size=t["vocab"], hidden_size=t["hidden"], intermediate_size=t["inter"],
                       num_hidden_layers=t["layers"], num_attention_heads=t["heads"],
                       num_key_value_heads=t["heads"], max_position_embeddings=2048, rms_norm_eps=1e-5,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)
    vision = CLIPVisionConfig(hidden_size=v["hidden"], intermediate_size=4 * v["hidden"],
                              num_hidden_layers=v["layers"], num_attention_heads=4, image_size=v["image"],
                              patch_size=v["patch"])
    n_img = (v["image"] // v["patch"]) ** 2
    cfg = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=t["vocab"] - 1,
                      image_seq_length=n_img, vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        model.lm_head.weight[cfg.image_token_index] = 0  # never generated: HF refuses image tokens without images
    return model


def prompts(cfg, batch: int, with_image: bool, seed: int = 0):
    """Left-padded prompts with 30..60 text tokens (MLLMU-Bench classification prompts are ~50-90 tokens)."""
    rng = np.random.default_rng(seed)
    img, n_img = cfg.image_token_index, cfg.image_seq_length
    rows = []
    for _ in range(batch):
        r = [1] + list(rng.integers(3, img - 1, size=int(rng.integers(30, 61))))
        rows.append(r[:3] + [img] * n_img + r[3:] if with_image else r)
    t = max(map(len, rows))
    ids, mask = np.zeros((batch, t), np.int64), np.zeros((batch, t), np.int64)
    for b, r in enumerate(rows):
        ids[b, t - len(r):], mask[b, t - len(r):] = r, 1
    s = cfg.vision_config.image_size
    px = rng.standard_normal((batch, 3, s, s)).astype(np.float32) if with_image else None
    return ids, mask, px


def median(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def run(size: str, batch: int, max_new: int, repeats: int, with_image: bool, tmp: str) -> dict:
    import jax
    import torch
    from flax import nnx

    import vkd_jax
    from vkd_jax.eval.decode import greedy_decode, strip_after_eos

    hf = build_hf(size)
    d = os.path.join(tmp, size)
    if not os.path.isdir(d):
        hf.save_pretrained(d)
    ours = vkd_jax.load_hf(d)
    split = nnx.split(ours)
    ids, mask, px = prompts(hf.config, batch, with_image)
    eos = 2
    kw = {"pixel_values": torch.tensor(px)} if px is not None else {}

    def hf_gen():
        with torch.no_grad():
            out = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=max_new,
                              do_sample=False, eos_token_id=eos, pad_token_id=0, **kw)
        return out[:, ids.shape[1]:].numpy()

    def ours_gen():
        return greedy_decode(ours, ids, mask, px, max_new_tokens=max_new, eos_id=eos, pad_id=0, split=split)

    t0 = time.perf_counter()
    first = ours_gen()
    compile_s = time.perf_counter() - t0
    hf_gen()  # warm-up
    t_hf, ref = median(hf_gen, repeats)
    t_ours, got = median(ours_gen, repeats)
    same = strip_after_eos(got, eos) == strip_after_eos(ref, eos) and np.array_equal(first, got)
    n_tok = sum(len(r) for r in strip_after_eos(got, eos))
    return {"size": size, "kind": "VQA" if with_image else "QA", "prompt": ids.shape[1], "batch": batch,
            "new_tokens": n_tok, "hf_s": t_hf, "ours_s": t_ours, "compile_s": compile_s, "same": same,
            "jax": jax.__version__, "torch": torch.__version__}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max_new_tokens", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default="tiny,small")
    ap.add_argument("--append", default=None, help="append the markdown section to this file")
    a = ap.parse_args(argv)
    import jax
    import torch
    jax.config.update("jax_default_matmul_precision", "highest")  # fp32 both sides: identical tokens expected
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in a.sizes.split(","):
            for with_image in (True, False):
                r = run(size, a.batch, a.max_new_tokens, a.repeats, with_image, tmp)
                print(r, flush=True)
                rows.append(r)
    lines = ["", "## Decoding (issue 5)", "",
             f"`python bench/decode.py` on {os.cpu_count()} CPU cores ({platform.machine()}), Python "
             f"{platform.python_version()}, jax {jax.__version__}, torch {torch.__version__} "
             f"({torch.get_num_threads()} threads). Greedy decoding of one batch of {a.batch} left-padded prompts "
             f"(30-60 text tokens, plus the image tokens for VQA), up to {a.max_new_tokens} new tokens, random LLaVA "
             "weights in fp32, the same prompts and weights on both sides; ours = `vkd_jax.eval.decode.greedy_decode` "
             "(one jitted `while_loop`, KV cache, early exit at EOS), HF = `LlavaForConditionalGeneration.generate("
             "do_sample=False)`. Median of "
             f"{a.repeats} runs after a warm-up; compile time (first call, once per shape) separately. "
             "Target: >= 3x faster than HF at batch 8.", "",
             "| model | kind | prompt len | new tokens (batch) | HF generate s | ours s | speed-up | ours compile s | "
             "same tokens |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['kind']} | {r['prompt']} | {r['new_tokens']} | {r['hf_s']:.3f} | "
                     f"{r['ours_s']:.3f} | {r['hf_s'] / r['ours_s']:.1f}x | {r['compile_s']:.1f} | "
                     f"{'yes' if r['same'] else 'NO'} |")
    lines += ["", "Models: " + "; ".join(
        f"{k}: LM {v['text']['hidden']}x{v['text']['layers']} (vocab {v['text']['vocab']}), ViT "
        f"{v['vision']['hidden']}x{v['vision']['layers']} at {v['vision']['image']} px / patch {v['vision']['patch']}"
        f" ({(v['vision']['image'] // v['vision']['patch']) ** 2} image tokens)" for k, v in SIZES.items()) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.append:
        with open(a.append, "a") as f:
            f.write(text)
    return 0 if all(r["same"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
