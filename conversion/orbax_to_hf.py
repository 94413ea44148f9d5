"""vkd_jax params checkpoint (orbax) -> HF LLaVA folder that transformers loads.

  python conversion/orbax_to_hf.py --ckpt C --out D2 [--template_hf_dir D] [--dtype float16] [--max_shard_size 5GB]
Tokenizer and processor files are copied from the template folder when given.
"""

import argparse
import os
import sys


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint folder written by hf_to_orbax or training")
    p.add_argument("--out", required=True, help="HF folder to create")
    p.add_argument("--template_hf_dir", default=None, help="copy tokenizer/processor files from this HF folder")
    p.add_argument("--dtype", default=None, help="dtype of the written tensors (default: the checkpoint's)")
    p.add_argument("--max_shard_size", default="5GB")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)

    from vkd_jax.cli import parse_size
    from vkd_jax.models.hf_io import save_hf
    from vkd_jax.models.orbax_io import load_model_orbax

    max_bytes = parse_size(a.max_shard_size)
    model = load_model_orbax(a.ckpt)
    out = save_hf(model, a.out, template_hf_dir=a.template_hf_dir, overwrite=a.overwrite,
                  max_shard_bytes=max_bytes, dtype=a.dtype)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from vkd_jax.cli import run_cli

    sys.exit(run_cli(main))
