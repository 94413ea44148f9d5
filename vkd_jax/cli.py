"""Shared command-line plumbing: a user error (vkd_jax.errors.UserError) prints one clear line and exits 1, no
traceback; any other exception is a bug and propagates with its traceback."""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import shlex
import sys
import threading

from vkd_jax.errors import ConfigError, UserError


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
def user_errors():
    """A user error (config, flag, data, weights, a damaged or unwritable checkpoint, a run that cannot fit) prints
    `error: ...` as one line and exits 1; any other exception propagates with its traceback."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


@contextlib.contextmanager
def guarded(command: list[str] | None = None):
    """Run a command's work under `user_errors`; a preemption (vkd_jax.preemption) prints where it saved and the
    command that resumes (`command`, default this process's), and exits 143. Libraries' logs of the same failure
    are dropped."""
    from vkd_jax import preemption

    _quiet_background_failures()
    preemption.install()
    try:
        with user_errors():
            yield
    except preemption.Preempted as e:
        cmd = command or [sys.executable, *sys.argv]
        print(f"{e}; resume with the same command: {shlex.join(cmd)}", file=sys.stderr, flush=True)
        sys.exit(preemption.EXIT_CODE)


def run_cli(main, argv=None) -> int:
    """`main(argv)`: 0; a user error printed as one `error: ...` line: 1; any other exception propagates."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
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
    raise ConfigError(f"--max_shard_size={text!r}: expected a size like 5GB, 200MB or a byte count")
