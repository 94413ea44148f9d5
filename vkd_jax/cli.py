"""Shared command-line plumbing: expected failures print one clear line and exit non-zero, no traceback."""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import shlex
import sys
import threading

from vkd_jax.models.config import ConfigError
from vkd_jax.models.hf_io import CheckpointError
from vkd_jax.models.safetensors_io import SafetensorsError

EXPECTED_ERRORS = (ConfigError, CheckpointError, SafetensorsError, FileNotFoundError, FileExistsError, ValueError)


class _DropLibraryErrors(std_logging.Filter):
    """orbax's and asyncio's own reports of a failed background write (tracebacks from every writer thread): the
    failure reaches the caller as an exception, which `guarded` prints as one line."""

    def filter(self, record):
        return not (record.name == "asyncio" or f"{os.sep}orbax{os.sep}" in (record.pathname or ""))


def _quiet_background_failures() -> None:
    for name in ("absl", "asyncio"):
        std_logging.getLogger(name).addFilter(_DropLibraryErrors())
    sys.unraisablehook = lambda unraisable: None  # coroutines of a failed orbax write, collected afterwards
    default = threading.excepthook

    def excepthook(args):  # orbax's writer threads finding their event loop closed after the failure
        if not (isinstance(args.exc_value, RuntimeError) and "Event loop is closed" in str(args.exc_value)):
            default(args)

    threading.excepthook = excepthook


@contextlib.contextmanager
def guarded(command: list[str] | None = None):
    """Run a command's work: a user error (config, data, weights, a damaged or unwritable checkpoint) prints
    `error: ...` as one line and exits 1; a preemption (vkd_jax.preemption) prints where it saved and the command
    that resumes (`command`, default this process's), and exits 143. Libraries' logs of the same failure are
    dropped."""
    from vkd_jax import preemption

    _quiet_background_failures()
    preemption.install()
    try:
        yield
    except EXPECTED_ERRORS as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except preemption.Preempted as e:
        cmd = command or [sys.executable, *sys.argv]
        print(f"{e}; resume with the same command: {shlex.join(cmd)}", file=sys.stderr, flush=True)
        sys.exit(preemption.EXIT_CODE)


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
