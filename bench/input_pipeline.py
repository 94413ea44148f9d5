"""Input pipeline throughput: VQA training examples per second per host at 336 px with 576 image tokens.

    python bench/input_pipeline.py [--workdir /tmp/vkd_bench_input] [--batches 30] [--append bench/RESULTS.md]

Data: an embedded benchmark rendered at `--image_size` px as JPEG (real MLLMU-Bench images are JPEGs of a few
hundred px), read through the TFDS builder and the grain pipeline exactly as training does: decode + CLIP
preprocessing to 336x336 per example, tokenization (done once up front, timed separately), padding to a static
length bucket. Each VQA example decodes its image again (no caching), the worst case.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vkd_jax.benchmarks.mllmu import generator as synthetic  # noqa: E402
from vkd_jax.benchmarks.mllmu import reader as mllmu_bench  # noqa: E402
from vkd_jax.benchmarks.mllmu.prompts import profile_examples  # noqa: E402
from vkd_jax.data import pipeline  # noqa: E402
from vkd_jax.data.tokenizer import train_tokenizer  # noqa: E402
from vkd_jax.preprocess import ImageProcessorConfig  # noqa: E402


def run(args) -> list[dict]:
    manual = os.path.join(args.workdir, "manual")
    if not os.path.isdir(os.path.join(manual, "Full_Set")):
        synthetic.generate(manual, seed=0, cfg=synthetic.WorldConfig(
            num_people=args.people, num_celebrities=4, image_size=args.image_size, image_format="JPEG"))
    tok = train_tokenizer(synthetic.tokenizer_texts(manual), os.path.join(args.workdir, "tok"))
    src = mllmu_bench.load("Full_Set", os.path.join(args.workdir, "data"), manual)
    results = []
    for threads in args.threads:
        cfg = pipeline.PipelineConfig(tasks=("classification", "generation"), types=("Image_Textual",),
                                      global_batch_size=args.batch, image_seq_length=576,
                                      image=ImageProcessorConfig(), length_buckets=(640, 768, 1024),
                                      num_threads=threads, prefetch=2 * threads, num_epochs=None)
        t0 = time.perf_counter()
        p = pipeline.InputPipeline(src, tok, cfg, examples=profile_examples)
        t_setup = time.perf_counter() - t0
        it = iter(p)
        for _ in range(args.warmup):
            next(it)
        t0 = time.perf_counter()
        for _ in range(args.batches):
            b = next(it)
        dt = time.perf_counter() - t0
        r = {"threads": threads, "examples_per_s": args.batches * args.batch / dt, "batch": args.batch,
             "shape_ids": b["input_ids"].shape, "shape_px": b["pixel_values"].shape,
             "setup_s": t_setup, "examples": len(p.examples)}
        print(r, flush=True)
        results.append(r)
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/vkd_bench_input")
    ap.add_argument("--people", type=int, default=64)
    ap.add_argument("--image_size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--append", default=None, help="append a markdown section to this file")
    args = ap.parse_args()
    results = run(args)
    if args.append:
        lines = ["", "## Input pipeline (issue 3)", "",
                 f"`python bench/input_pipeline.py --append bench/RESULTS.md` on {os.cpu_count()} CPU cores "
                 f"({platform.processor() or platform.machine()}), Python {platform.python_version()}. "
                 f"VQA examples (classification + generation prompts with answers) from an embedded benchmark "
                 f"rendered at {args.image_size} px JPEG, through TFDS `mllmu_bench/Full_Set` and the grain "
                 f"pipeline: JPEG decode + CLIP preprocessing to 336x336 per example (no caching), 576 image "
                 f"tokens, static padding to a length bucket, global batch {args.batch}, one process. "
                 f"Target: >= 64 examples/s per host.", "",
                 "| grain threads | examples/s | batch input_ids | pixel_values | setup (flatten + tokenize) |",
                 "|---|---|---|---|---|"]
        for r in results:
            lines.append(f"| {r['threads']} | {r['examples_per_s']:.0f} | {list(r['shape_ids'])} | "
                         f"{list(r['shape_px'])} | {r['setup_s']:.2f} s for {r['examples']} examples |")
        with open(args.append, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
