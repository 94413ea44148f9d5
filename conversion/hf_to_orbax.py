"""HF LLaVA folder (safetensors) -> vkd_jax params checkpoint (orbax) + model_config.json.

  python conversion/hf_to_orbax.py --hf_dir D --out C [--dtype bfloat16] [--overwrite]
"""

import argparse
import os
import sys


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf_dir", required=True, help="HF folder with config.json and *.safetensors")
    p.add_argument("--out", required=True, help="checkpoint folder to create")
    p.add_argument("--dtype", default=None,
                   help="store every param in this dtype (float32|bfloat16|float16); default: each tensor as the "
                        "folder stores it (bitwise)")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)

    from vkd_jax.models.hf_io import load_hf, read_model_config
    from vkd_jax.models.orbax_io import save_model_orbax

    main_dtype = a.dtype or read_model_config(a.hf_dir).param_dtype  # also the checkpoint's default compute dtype
    model = load_hf(a.hf_dir, dtype=main_dtype, param_dtype=a.dtype)
    out = save_model_orbax(model, a.out, overwrite=a.overwrite)
    extra = f", {len(model.config.param_dtype_overrides)} params in another dtype" \
        if model.config.param_dtype_overrides else ""
    print(f"wrote {out} ({model.config.param_dtype}{extra})")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from vkd_jax.cli import run_cli

    sys.exit(run_cli(main))
