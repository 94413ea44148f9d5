"""Damage detection for what a run writes and later restores (stage params, saliency masks, training checkpoints):
the folder's writer records the size and sha256 of every file in `DIGESTS.json`; every restore checks them first and
refuses a folder with a missing, truncated, altered or unrecorded file, naming the folder and the files, before any
step runs. orbax alone does not: altered bytes inside a chunk can decode to other numbers without an error.

    write_digests(folder)     # once the folder's files are final (process 0 of a multi-process save)
    verify_digests(folder)    # raises DamagedCheckpointError; every process checks every file (no collective)

Paths may be gs:// URIs (read through epath). Hashing reads the whole folder once per restore.
"""

from __future__ import annotations

import hashlib
import json

from vkd_jax.errors import UserError
from vkd_jax.io_utils import COMPLETE_MARKER, as_path, atomic_write_text

DIGESTS_FILE = "DIGESTS.json"
_CHUNK = 1 << 22


class DamagedCheckpointError(UserError):
    """A folder's files disagree with its DIGESTS.json (or it has none): never loaded."""


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with as_path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder) -> dict[str, object]:
    """{relative posix path: path} of every file under `folder` except the digests and the completion marker."""
    out = {}

    def walk(d, prefix):
        for p in d.iterdir():
            rel = prefix + p.name
            if p.is_dir():
                walk(p, rel + "/")
            elif rel not in (DIGESTS_FILE, COMPLETE_MARKER):
                out[rel] = p

    walk(as_path(folder), "")
    return out


def write_digests(folder) -> None:
    files = {rel: {"bytes": p.stat().length, "sha256": file_sha256(p)} for rel, p in sorted(_files(folder).items())}
    atomic_write_text(as_path(folder) / DIGESTS_FILE,
                      json.dumps({"algorithm": "sha256", "files": files}, indent=1, sort_keys=True))


def has_digests(folder) -> bool:
    return as_path(folder).joinpath(DIGESTS_FILE).is_file()


def verify_digests(folder, what: str = "checkpoint") -> None:
    """Raise DamagedCheckpointError naming `folder` and what is wrong, unless every recorded file is there with its
    size and sha256 and no other file is."""
    path = as_path(folder) / DIGESTS_FILE
    try:
        recorded = json.loads(path.read_text())["files"]
    except FileNotFoundError:
        raise DamagedCheckpointError(
            f"{folder}: this {what} has no {DIGESTS_FILE} (its writer was interrupted, or an older vkd_jax wrote "
            f"it): it cannot be checked, so it is not loaded; delete the folder to recompute it") from None
    except (ValueError, KeyError, TypeError) as e:
        raise DamagedCheckpointError(f"{path}: unreadable ({e}); delete {folder} to recompute it") from None
    have = _files(folder)
    bad = [f"{rel} is missing" for rel in sorted(set(recorded) - set(have))]
    bad += [f"{rel} is not recorded" for rel in sorted(set(have) - set(recorded))]
    for rel in sorted(set(recorded) & set(have)):
        want = recorded[rel]
        size = have[rel].stat().length
        if size != want["bytes"]:
            bad.append(f"{rel} has {size} bytes, {want['bytes']} were written")
        elif file_sha256(have[rel]) != want["sha256"]:
            bad.append(f"{rel} is altered (sha256 differs from the one recorded when it was written)")
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DamagedCheckpointError(f"{folder}: this {what} is damaged ({shown}); it is not loaded. Delete the "
                                     f"folder to recompute it (or restore it from a copy)")
