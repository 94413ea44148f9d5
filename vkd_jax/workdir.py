"""The work directory a run shares with others (`reproduce`: every method and seed under one vanilla model): what
must match for a shared folder to be reused, and where each forget split's run lives.
"""

from __future__ import annotations

import json
import os

import jax

from vkd_jax.errors import ConfigError
from vkd_jax.io_utils import atomic_write_text, read_json_if_exists


def _shared_fields() -> tuple[str, ...]:
    from vkd_jax.shipped import VANILLA_FIELDS

    return VANILLA_FIELDS + ("forget_ratio", "eval", "stages.reference", "vanilla_model")


def check_shared(cfg, shared: str) -> None:
    """`shared` (benchmark, vanilla and reference models, their evaluations) serves every run whose config agrees
    on its fields (the vanilla model's, the forget ratio, evaluation, reference model); it records them in
    shared/pipeline.json on first use, and a run that disagrees is an error naming the fields (instead of silently
    reusing another config's vanilla model)."""
    from vkd_jax.shipped import config_fields

    want = config_fields(cfg, _shared_fields())
    path = os.path.join(shared, "pipeline.json")
    have = read_json_if_exists(path)
    if have is None:
        if jax.process_index() == 0:
            atomic_write_text(path, json.dumps(want, indent=1, sort_keys=True))
        return
    want = json.loads(json.dumps(want))  # tuples as lists, as stored
    diff = [f"{k}: {have.get(k)!r} (shared) vs {want.get(k)!r} (config)" for k in sorted(set(have) | set(want))
            if have.get(k) != want.get(k)]
    if diff:
        raise ConfigError(f"{path}: this shared folder's vanilla model was made by another config ("
                          + "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
                          + "); use another work directory or the config it was made with")


def split_dir(base: str, k: int) -> str:
    """Where forget split k keeps its stages and evaluations: `base` itself for split 0, base/split<k> else."""
    return base if k == 0 else os.path.join(base, f"split{k}")
