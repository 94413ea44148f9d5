"""HF LLaVA folder (safetensors) -> vkd_jax params checkpoint (orbax) + model_config.json.

  python conversion/hf_to_orbax.py --hf_dir D --out C [--dtype bfloat16] [--overwrite]
"""

import argparse
import json
import os
import sys


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf_dir", required=True, help="HF folder with config.json and *.safetensors")
    p.add_argument("--out", required=True, help="checkpoint folder to create")
    p.add_argument("--dtype", default=None,
                   help="param dtype to store (float32|bfloat16|float16); default: the folder's torch_dtype")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)

    from vkd_jax.models.hf_io import load_hf
    from vkd_jax.models.orbax_io import save_model_orbax

    dtype = a.dtype
    if dtype is None:
        cfg_path = os.path.join(a.hf_dir, "config.json")
        stored = None
        if os.path.isfile(cfg_path):
            with open(cfg_path) as f:
                c = json.load(f)
            stored = c.get("dtype") or c.get("torch_dtype")
        dtype = stored if stored in ("float32", "bfloat16", "float16") else "float32"
    model = load_hf(a.hf_dir, dtype=dtype)
    out = save_model_orbax(model, a.out, overwrite=a.overwrite)
    print(f"wrote {out} ({dtype})")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from vkd_jax.cli import run_cli

    sys.exit(run_cli(main))
