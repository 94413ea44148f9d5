"""Preemption: SIGTERM (TPU maintenance events, spot VMs, SLURM `--signal`) saves the training step in flight at the
next step boundary and stops the run; the rerun of the same command resumes from that step as if uninterrupted.

    install()                        # main: before any work
    with deferred():                 # a training loop: SIGTERM is answered at its next step boundary
        ... if reached(step): save step, then raise Preempted(...)

One process: our SIGTERM handler sets a flag; inside `deferred()` the loop reads it at each step boundary, outside
(evaluation, data preparation) the handler raises Preempted at once, since nothing there needs saving (every
finished piece is already on disk). Several processes: jax.distributed's preemption service owns SIGTERM; it tells
every process the same step to stop at (`multihost_utils.reached_preemption_sync_point`, called by every process at
every step), so they save that step together. Outside a training loop a multi-process run keeps going until the next
loop's sync point or the scheduler's kill.
"""

from __future__ import annotations

import contextlib
import signal
import threading

EXIT_CODE = 143  # 128 + SIGTERM: what schedulers read as "terminated"; the rerun resumes


class Preempted(Exception):
    """The run stopped on SIGTERM; what was in flight is saved (the message says where) and a rerun resumes."""


_requested = False
_depth = 0


def _multi_process() -> bool:
    from jax._src import distributed

    return distributed.global_state.client is not None


def _on_sigterm(signum, frame):
    global _requested
    _requested = True
    if _depth == 0:
        raise Preempted("preempted (SIGTERM) outside a training step; every finished stage is saved")


def install() -> None:
    """Answer SIGTERM ourselves in a one-process run (a multi-process run leaves it to jax.distributed)."""
    if threading.current_thread() is threading.main_thread() and not _multi_process():
        signal.signal(signal.SIGTERM, _on_sigterm)


def requested() -> bool:
    return _requested


def reset() -> None:
    """Forget a SIGTERM already answered (tests that resume in the same process)."""
    global _requested
    _requested = False


@contextlib.contextmanager
def deferred():
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1


def reached(step: int) -> bool:
    """True at the step boundary where this process (all processes, together) must save and stop."""
    if _multi_process():
        from jax.experimental import multihost_utils

        return multihost_utils.reached_preemption_sync_point(step)
    return _requested
