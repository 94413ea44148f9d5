"""Minimal streaming safetensors reader/writer on numpy (bf16 via ml_dtypes), one tensor at a time.

Why our own: the `safetensors` numpy backend has no bfloat16, and the flax backend would materialise jax arrays
before we can transform them. The format is simple: u64 header length, JSON header {name: {dtype, shape,
data_offsets}}, then the raw little-endian bytes. Reading memory-maps the file (no copy until a tensor is
transformed); writing streams tensors in order after a precomputed header.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from typing import Iterable, Iterator

import ml_dtypes
import numpy as np

ST_TO_NP = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
NP_TO_ST = {np.dtype(v).name: k for k, v in ST_TO_NP.items()}


class SafetensorsError(ValueError):
    pass


class SafetensorsFile:
    """Lazily readable safetensors file: `keys()`, `shape(k)`, `dtype(k)`, `get(k)` (a view on the mmap)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        size = os.path.getsize(self.path)
        if size < 8:
            raise SafetensorsError(f"{self.path}: truncated safetensors file ({size} bytes, no header)")
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise SafetensorsError(f"{self.path}: truncated safetensors file (header of {n} bytes, "
                                       f"file has {size})")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise SafetensorsError(f"{self.path}: corrupt safetensors header ({e})") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self._entries = header
        self._data_start = 8 + n
        end = max((e["data_offsets"][1] for e in header.values()), default=0)
        if self._data_start + end > size:
            raise SafetensorsError(f"{self.path}: truncated safetensors file (tensors need "
                                   f"{self._data_start + end} bytes, file has {size})")
        for k, e in header.items():
            if e.get("dtype") not in ST_TO_NP:
                raise SafetensorsError(f"{self.path}: tensor {k!r} has unsupported dtype {e.get('dtype')!r}")
        self._mm = None

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key]["shape"])

    def dtype(self, key: str) -> np.dtype:
        return np.dtype(ST_TO_NP[self._entries[key]["dtype"]])

    def get(self, key: str) -> np.ndarray:
        if self._mm is None:
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        e = self._entries[key]
        start, stop = e["data_offsets"]
        dt = self.dtype(key)
        count = int(np.prod(e["shape"], dtype=np.int64))
        if (stop - start) != count * dt.itemsize:
            raise SafetensorsError(f"{self.path}: tensor {key!r} has {stop - start} bytes for shape "
                                   f"{e['shape']} {e['dtype']}")
        return np.frombuffer(self._mm, dtype=dt, count=count, offset=self._data_start + start).reshape(e["shape"])

    def close(self):
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a caller still holds a view; the map closes when that view dies
                pass
            self._mm = None


def write_safetensors(path: str, specs: list[tuple[str, tuple[int, ...], np.dtype]],
                      tensors: Iterable[np.ndarray], metadata: dict | None = None) -> None:
    """Write tensors in the order of `specs` (name, shape, dtype); `tensors` yields them one at a time."""
    header: dict = {"__metadata__": {"format": "pt", **(metadata or {})}}
    off = 0
    for name, shape, dt in specs:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
        header[name] = {"dtype": NP_TO_ST[np.dtype(dt).name], "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for (name, shape, dt), t in zip(specs, tensors, strict=True):
            t = np.ascontiguousarray(t)
            if tuple(t.shape) != tuple(shape) or t.dtype != np.dtype(dt):
                raise SafetensorsError(f"{path}: tensor {name!r} is {t.shape} {t.dtype}, header says {shape} {dt}")
            f.write(memoryview(t.reshape(-1).view(np.uint8)))


def iter_files(paths: list[str]) -> Iterator[SafetensorsFile]:
    for p in paths:
        f = SafetensorsFile(p)
        try:
            yield f
        finally:
            f.close()
