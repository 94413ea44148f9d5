"""Work-directory I/O: local paths or object-store URIs (gs://...), all through `etils.epath`, written atomically.

A crash never leaves a half-written checkpoint, export or report behind:
  * files: written to `<path>.tmp-<pid>`, then `replace`d onto `<path>` (a rename on local disk; on an object
    store a single-object copy, and an object only appears once fully uploaded);
  * folders (`atomic_dir`): on local disk built under a temp name beside the target and renamed into place. An
    object store has no atomic folder rename, so a remote folder is built under a temp prefix, moved object by
    object, and then gets a `_COMPLETE` marker; `is_complete_dir` (what readers check) requires the marker there;
  * orbax folders (`orbax_dir`: params, masks): remotely written in place, since orbax commits its checkpoints
    atomically itself, and marked `_COMPLETE`; locally as `atomic_dir`.

Local paths behave exactly as with os/open/shutil. Remote paths need an fsspec filesystem for the scheme (gcsfs
for gs:// when TensorFlow is absent; epath picks TensorFlow's gfile when it is installed).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid

from etils import epath

from vkd_jax.errors import UserError

COMPLETE_MARKER = "_COMPLETE"


class OutputExistsError(UserError, FileExistsError):
    """An output folder that exists and is not empty, written without overwrite (a command line's --out without
    --overwrite); still a FileExistsError for callers of the library."""


def is_remote(path) -> bool:
    """True for URIs such as gs://bucket/run (anything with a scheme), False for local paths."""
    return "://" in os.fspath(path)


def resolve(path) -> str:
    """The canonical string form: an absolute path for local paths, the URI unchanged for remote ones."""
    path = os.fspath(path)
    return path if is_remote(path) else os.path.abspath(path)


def as_path(path) -> epath.Path:
    return epath.Path(resolve(path))


def makedirs(path) -> None:
    as_path(path).mkdir(parents=True, exist_ok=True)


def is_file(path) -> bool:
    return as_path(path).is_file()


def read_text(path) -> str:
    return as_path(path).read_text()


def read_json_if_exists(path):
    """The parsed JSON file at `path`, or None when there is none (the stage caches)."""
    p = as_path(path)
    return json.loads(p.read_text()) if p.is_file() else None


def is_complete_dir(path) -> bool:
    """A folder written by `atomic_dir` (or by hand on local disk) is there in full."""
    p = as_path(path)
    return p.joinpath(COMPLETE_MARKER).exists() if is_remote(path) else p.is_dir()


def atomic_write_bytes(path, data: bytes) -> None:
    p = as_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.parent / f"{p.name}.tmp-{os.getpid()}"
    tmp.write_bytes(data)
    tmp.replace(p)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _has_files(p: epath.Path) -> bool:
    return p.is_dir() and any(True for _ in p.iterdir())


def _jax_processes() -> tuple[int, int]:
    """(process index, count) of a running multi-controller JAX; (0, 1) when jax is not even imported."""
    jax = sys.modules.get("jax")
    return (jax.process_index(), jax.process_count()) if jax is not None else (0, 1)


def _check_overwrite(out, overwrite: bool) -> None:
    if _has_files(out) and not overwrite:
        raise OutputExistsError(f"{out} exists and is not empty (pass overwrite=True to replace it)")


def _promote_local(tmp: str, out_dir: str) -> None:
    old = None
    if os.path.exists(out_dir):
        old = tmp + ".old"
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _promote_remote(tmp: epath.Path, out: epath.Path) -> None:
    marker = out / COMPLETE_MARKER
    if out.exists():
        if marker.exists():
            marker.unlink()  # from here until the new marker, readers see no complete folder
        out.rmtree()
    if _has_files(tmp):
        tmp.rename(out)
    else:  # an empty prefix is no object on GCS: nothing to move
        out.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            tmp.rmtree()
    marker.write_text(f"{time.time()}\n")


@contextlib.contextmanager
def atomic_dir(out_dir, overwrite: bool = False, *, collective: bool = False):
    """Yield a temp folder beside `out_dir` (a str); on success it replaces `out_dir`, on error it is removed.

    Local: one rename, so `out_dir` is never partial. Remote: the temp prefix is moved object by object and
    `out_dir/_COMPLETE` written last (removed first when overwriting); check it with `is_complete_dir`.
    `collective=True` (orbax saves, which every process of a multi-process JAX run makes together): with more than
    one process, all of them must enter; they share one temp folder and process 0 alone moves it into place,
    between barriers. Otherwise the folder has a single writer.
    """
    remote = is_remote(out_dir)
    if collective and _jax_processes()[1] > 1:
        with _atomic_dir_shared(epath.Path(os.fspath(out_dir)) if remote else
                                os.path.abspath(os.fspath(out_dir)), overwrite, remote) as tmp:
            yield tmp
        return
    if remote:
        with _atomic_remote_dir(epath.Path(os.fspath(out_dir)), overwrite) as tmp:
            yield tmp
        return
    out_dir = os.path.abspath(os.fspath(out_dir))
    _check_overwrite(epath.Path(out_dir), overwrite)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the final folder gets the usual permissions
    try:
        yield tmp
        _promote_local(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _atomic_dir_shared(out, overwrite: bool, remote: bool):
    from jax.experimental import multihost_utils

    first = _jax_processes()[0] == 0
    key = os.fspath(out)
    _check_overwrite(epath.Path(key), overwrite)  # every process sees the shared folder: all raise, none waits
    tmp = epath.Path(key + ".tmp-shared")
    if first:
        if tmp.exists():
            tmp.rmtree()  # left by a crashed run
        tmp.mkdir(parents=True, exist_ok=True)
    multihost_utils.sync_global_devices(f"atomic_dir start {key}")
    yield os.fspath(tmp)
    multihost_utils.sync_global_devices(f"atomic_dir written {key}")
    if first:
        _promote_remote(tmp, epath.Path(key)) if remote else _promote_local(os.fspath(tmp), key)
    multihost_utils.sync_global_devices(f"atomic_dir done {key}")


@contextlib.contextmanager
def _atomic_remote_dir(out: epath.Path, overwrite: bool):
    _check_overwrite(out, overwrite)
    tmp = out.parent / f"{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        yield os.fspath(tmp)
        _promote_remote(tmp, out)
    except BaseException:
        if tmp.exists():
            tmp.rmtree()
        raise


@contextlib.contextmanager
def orbax_dir(out_dir, overwrite: bool = False, *, collective: bool = False):
    """A folder whose large content orbax writes (params, masks), beside small files of ours.

    Local: exactly `atomic_dir` (one rename, nothing copied). Remote: orbax already commits each checkpoint
    atomically where it writes it, so the folder is written in place (no second, object-by-object copy of a 7B
    checkpoint) and `_COMPLETE` marks it finished (removed first when overwriting); readers check
    `is_complete_dir`. `collective` as in `atomic_dir`: every process enters, process 0 clears and marks it."""
    if not is_remote(out_dir):
        with atomic_dir(out_dir, overwrite, collective=collective) as tmp:
            yield tmp
        return
    out = epath.Path(os.fspath(out_dir))
    _check_overwrite(out, overwrite)
    multi = collective and _jax_processes()[1] > 1
    first = _jax_processes()[0] == 0 or not multi
    if first:
        if out.joinpath(COMPLETE_MARKER).exists():
            out.joinpath(COMPLETE_MARKER).unlink()  # from here until the new marker, readers see no folder
        if out.exists():
            out.rmtree()
        out.mkdir(parents=True, exist_ok=True)
    if multi:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"orbax_dir start {out}")
    yield os.fspath(out)
    if multi:
        multihost_utils.sync_global_devices(f"orbax_dir written {out}")
    if first:
        out.joinpath(COMPLETE_MARKER).write_text(f"{time.time()}\n")
    if multi:
        multihost_utils.sync_global_devices(f"orbax_dir done {out}")


@contextlib.contextmanager
def exclusive(folder, what: str):
    """Hold `folder`'s lock while a stage trains in it, so that two runs started on one work directory take turns
    (the second then finds the stage finished) instead of writing the same checkpoints at once. Local folders of a
    one-process run only (flock on <folder>/.lock); a multi-process run's processes write together by design, and
    object stores have no locks."""
    if is_remote(folder) or _jax_processes()[1] > 1:
        yield
        return
    import fcntl

    os.makedirs(os.fspath(folder), exist_ok=True)
    with open(os.path.join(os.fspath(folder), ".lock"), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{what}: another run is training in {folder}; waiting for it", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def upload_tree(local_src: str, dst) -> None:
    """Copy the files under local folder `local_src` into folder `dst` (local or remote), 1 MiB at a time."""
    dst = as_path(dst)
    for root, _, files in os.walk(local_src):
        rel = os.path.relpath(root, local_src)
        target = dst if rel == "." else dst / rel
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            epath.Path(os.path.join(root, name)).copy(target / name, overwrite=True)


@contextlib.contextmanager
def local_staging_dir(out_dir, overwrite: bool = False):
    """For writers that need a local filesystem (safetensors, shutil): yield `out_dir` itself when it is local;
    for a remote `out_dir` yield a local temp folder whose files are then copied into `out_dir` through
    `atomic_dir`. Only for single-writer outputs (process 0), never for multi-host orbax saves."""
    if not is_remote(out_dir):
        yield resolve(out_dir)
        return
    with tempfile.TemporaryDirectory(prefix="vkd_stage-") as local:
        staged = os.path.join(local, os.path.basename(os.fspath(out_dir).rstrip("/")))
        yield staged
        with atomic_dir(out_dir, overwrite) as tmp:
            upload_tree(staged, tmp)


def local_cache_dir(path, cache_root: str | None = None) -> str:
    """A local folder for `path`: `path` itself when local; for a URI `<cache_root>/<scheme>/<rest of URI>`, with
    cache_root from the argument, $VKD_JAX_CACHE, or ~/.cache/vkd_jax."""
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.abspath(path)
    root = cache_root or os.environ.get("VKD_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                            "vkd_jax")
    scheme, rest = path.split("://", 1)
    rest = re.sub(r"[^A-Za-z0-9._/-]", "_", rest).strip("/")
    return os.path.join(os.path.abspath(root), scheme, *[p for p in rest.split("/") if p not in ("", ".", "..")])


class AppendFile:
    """An append-only text/bytes log at a local or remote path (metrics JSONL, TensorBoard event files).

    Local: an ordinary append-mode file, flushed on `flush`. Remote (object stores cannot append): the content
    lives in a local temp file seeded with the remote object's current content, and the whole file is uploaded
    (temp + replace) on `flush` at most every `sync_seconds`, and always on `close`.
    """

    def __init__(self, path, mode: str = "a", sync_seconds: float = 30.0):
        assert mode in ("a", "ab"), mode
        self.path = resolve(path)
        self.remote = is_remote(self.path)
        self.sync_seconds = sync_seconds
        self._synced: float | None = None  # monotonic time of the last upload; None: never uploaded
        if not self.remote:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._f = open(self.path, mode)
            return
        remote = epath.Path(self.path)
        remote.parent.mkdir(parents=True, exist_ok=True)
        fd, self._local = tempfile.mkstemp(prefix="vkd_append-")
        with os.fdopen(fd, "wb") as f:
            if remote.exists():
                f.write(remote.read_bytes())
        self._f = open(self._local, mode)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def write(self, data):
        return self._f.write(data)

    def flush(self, force: bool = False):
        self._f.flush()
        if self.remote and (force or self._synced is None or time.monotonic() - self._synced >= self.sync_seconds):
            with open(self._local, "rb") as f:
                atomic_write_bytes(self.path, f.read())
            self._synced = time.monotonic()

    def close(self):
        if self._f.closed:
            return
        self.flush(force=True)
        self._f.close()
        if self.remote:
            os.remove(self._local)
