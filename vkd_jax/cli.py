"""Shared command-line plumbing: expected failures print one clear line and exit non-zero, no traceback."""

from __future__ import annotations

import sys

from vkd_jax.models.config import ConfigError
from vkd_jax.models.hf_io import CheckpointError
from vkd_jax.models.safetensors_io import SafetensorsError

EXPECTED_ERRORS = (ConfigError, CheckpointError, SafetensorsError, FileNotFoundError, FileExistsError, ValueError)


def run_cli(main, argv=None) -> int:
    try:
        main(sys.argv[1:] if argv is None else argv)
    except EXPECTED_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def parse_size(text: str) -> int:
    """'5GB' / '200MB' / '123' -> bytes."""
    units = {"KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "B": 1}
    t = text.strip().upper()
    for u, m in units.items():
        if t.endswith(u) and t[: -len(u)].strip().replace(".", "", 1).isdigit():
            return int(float(t[: -len(u)]) * m)
    if t.isdigit():
        return int(t)
    raise ValueError(f"--max_shard_size={text!r}: expected a size like 5GB, 200MB or a byte count")
