"""Hugging Face repo ids where the config wants a local folder, resolved offline from the local HF cache.

Users drive HF tools by hub names (`--config.hf_dir=llava-hf/llava-1.5-7b-hf`, `--config.data.manual_dir=
MLLMMU/MLLMU-Bench`). Nothing is downloaded at run time: a name is looked up in the local cache
(`huggingface_hub.snapshot_download(..., local_files_only=True)`, the cache `HF_HUB_CACHE` / `HF_HOME` point to);
a name that is not there is an error giving the command that downloads it. An existing local folder always wins.
"""

from __future__ import annotations

import os
import re

from vkd_jax.errors import ConfigError

# owner/name as the hub spells repo ids; anything with a scheme (gs://) or more parts is a path
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# config field -> the kind of repo it names
HUB_FIELDS = {"hf_dir": "model", "data.manual_dir": "dataset"}


def local_folder(value: str, field: str, repo_type: str) -> str:
    """`value` itself when it is empty, a local folder or not a repo id; else the cached snapshot's folder."""
    if not value or os.path.isdir(value) or not REPO_ID.match(value):
        return value
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(value, repo_type=repo_type, local_files_only=True)
    except LocalEntryNotFoundError:
        kind = "" if repo_type == "model" else f" --repo-type {repo_type}"
        raise ConfigError(
            f"config.{field}={value!r}: no such local folder, and the Hugging Face {repo_type} {value} is not in the "
            f"local cache ({constants.HF_HUB_CACHE}); nothing is downloaded at run time: download it first with "
            f"`hf download {value}{kind}` (`huggingface-cli download` before huggingface_hub 0.34), or pass its local "
            "folder") from None


def resolve_hub_names(cfg) -> None:
    """Replace, in place, each HUB_FIELDS value that is a cached repo id by its local snapshot folder."""
    for field, repo_type in HUB_FIELDS.items():
        *parents, leaf = field.split(".")
        node = cfg
        for p in parents:
            node = node.get(p) if node is not None and p in node else None
        if node is not None and leaf in node:
            node[leaf] = local_folder(str(node[leaf] or ""), field, repo_type)
