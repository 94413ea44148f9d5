"""Process-0 metrics: JSONL (always), TensorBoard event files (tensorboardX: no TensorFlow), a tqdm bar.

The JSONL goes through `vkd_jax.io_utils.AppendFile` and the event files are written by tensorboardX into a local
folder (the logdir itself, or for a gs:// URI a local staging folder whose files are uploaded whole at most every
30 s and on close: object stores cannot append), so logdir may be a remote URI.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid

import jax
import numpy as np

from vkd_jax.io_utils import AppendFile, atomic_write_bytes, is_remote, makedirs


class TensorBoardLog:
    """Scalars as TensorBoard events under `logdir` (local or remote)."""

    def __init__(self, logdir: str, sync_seconds: float = 30.0):
        from tensorboardX import SummaryWriter

        self.logdir, self.remote, self.sync_seconds = logdir, is_remote(logdir), sync_seconds
        self._local = tempfile.mkdtemp(prefix="vkd_tb-") if self.remote else logdir
        if not self.remote:
            makedirs(logdir)
        # a unique suffix: tensorboardX names files by second and host, and a writer reopened within the same
        # second (a stage resumed at once) would otherwise truncate the earlier file
        self._w = SummaryWriter(self._local, flush_secs=3600, filename_suffix=f".{os.getpid()}.{uuid.uuid4().hex[:8]}")
        self._synced: float | None = None

    def scalars(self, step: int, values: dict):
        for k, v in values.items():
            self._w.add_scalar(k, v, step)
        self.flush()

    def flush(self, force: bool = False):
        self._w.flush()
        if self.remote and (force or self._synced is None or time.monotonic() - self._synced >= self.sync_seconds):
            for name in os.listdir(self._local):
                with open(os.path.join(self._local, name), "rb") as f:
                    atomic_write_bytes(f"{self.logdir}/{name}", f.read())
            self._synced = time.monotonic()

    def close(self):
        self.flush(force=True)
        self._w.close()
        if self.remote:
            shutil.rmtree(self._local, ignore_errors=True)


class MetricsLogger:
    """JSONL + TensorBoard + progress bar on process 0; silent elsewhere."""

    def __init__(self, logdir: str | None, total_steps: int, *, desc: str = "", start_step: int = 0,
                 batch_examples: int = 0, progress: bool = True):
        self.active = jax.process_index() == 0 and logdir is not None
        self.batch_examples = batch_examples
        self._t, self._step = time.perf_counter(), start_step
        self.bar = None
        if self.active:
            self._jsonl = AppendFile(os.path.join(logdir, "metrics.jsonl"))
            self._tb = TensorBoardLog(os.path.join(logdir, "tb"))
        if progress and jax.process_index() == 0:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True, leave=False)

    def resume_at(self, step: int):
        """The run continues from `step` (a restored checkpoint): rates count from here and now, the bar starts
        there."""
        self._t, self._step = time.perf_counter(), step
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()

    def log(self, step: int, metrics: dict):
        vals = {k: float(np.asarray(v)) for k, v in metrics.items() if np.asarray(v).size == 1}
        now = time.perf_counter()
        dt = max(now - self._t, 1e-9)
        if self.batch_examples and step > self._step:
            vals["examples_per_s"] = self.batch_examples * (step - self._step) / dt
        vals["steps_per_s"] = (step - self._step) / dt
        self._t, self._step = now, step
        if self.active:
            self._jsonl.write(json.dumps({"step": step, **vals}) + "\n")
            self._jsonl.flush()
            self._tb.scalars(step, vals)
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(loss=f"{vals.get('loss', float('nan')):.4f}",
                                 ex_s=f"{vals.get('examples_per_s', 0):.1f}", refresh=False)
            self.bar.refresh()
        return vals

    def event(self, record: dict):
        if self.active:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.active:
            self._jsonl.close()
            self._tb.close()
