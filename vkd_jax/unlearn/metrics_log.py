"""Process-0 metrics: JSONL (always), TensorBoard event files (written directly, no TensorFlow), a tqdm bar.

Both go through `vkd_jax.io_utils.AppendFile`, so logdir may be a gs:// URI (each file uploaded whole on flush, at
most every 30 s, and on close: object stores cannot append). The event file is the TFRecord framing (length, masked
CRC32C, payload, masked CRC32C) around hand-encoded `Event` protos holding scalar `Summary` values; TensorBoard
reads it as `events.out.tfevents.*`.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time

import jax
import numpy as np

from vkd_jax.io_utils import AppendFile

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, wire: int, payload: bytes) -> bytes:
    return _varint((num << 3) | wire) + payload


def _bytes_field(num: int, data: bytes) -> bytes:
    return _field(num, 2, _varint(len(data)) + data)


def event_proto(wall_time: float, step: int, scalars: dict | None = None, file_version: str | None = None) -> bytes:
    msg = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version is not None:
        msg += _bytes_field(3, file_version.encode())
    if scalars:
        summary = b"".join(_bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", val)))
                           for tag, val in scalars.items())
        msg += _bytes_field(5, summary)
    return msg


def tfrecord(payload: bytes) -> bytes:
    header = struct.pack("<Q", len(payload))
    return header + struct.pack("<I", _masked_crc(header)) + payload + struct.pack("<I", _masked_crc(payload))


class EventWriter:
    def __init__(self, logdir: str):
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(logdir, name)
        self._f = AppendFile(self.path, "ab")
        self._f.write(tfrecord(event_proto(time.time(), 0, file_version="brain.Event:2")))

    def scalars(self, step: int, values: dict):
        self._f.write(tfrecord(event_proto(time.time(), step, values)))
        self._f.flush()

    def close(self):
        self._f.close()


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
            self._tb = EventWriter(os.path.join(logdir, "tb"))
        if progress and jax.process_index() == 0:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True, leave=False)

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
