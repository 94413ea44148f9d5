"""safetensors files: reading through the `safetensors` package (`safe_open(framework="numpy")`, bf16 as ml_dtypes),
one tensor at a time; writing by a small streaming writer of our own.

Why our own writer: `safetensors.numpy.save_file` takes a dict of every tensor of the file, so a 5 GB shard of a 7B
export would need all of it in host memory at once (plus the device-to-host copies); `write_safetensors` writes the
header first (it only needs shapes and dtypes) and then streams each tensor as the caller produces it. The files
are read back by the package in the tests (tests/test_conversion.py), so the format is checked by the library.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable

import ml_dtypes
import numpy as np

from vkd_jax.errors import UserError

NP_TO_ST = {np.dtype(v).name: k for k, v in {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}.items()}
ST_TO_NAME = {v: k for k, v in NP_TO_ST.items()}


class SafetensorsError(UserError):
    """A safetensors file that cannot be read as one (truncated, a corrupt header, an unsupported dtype); the message
    names the file and tensor."""


class SafetensorsFile:
    """A readable safetensors file: `keys()`, `shape(k)`, `dtype(k)` (numpy dtype name), `get(k)` (a numpy
    array). Opening checks the header; a bad file raises SafetensorsError naming it."""

    def __init__(self, path):
        from safetensors import SafetensorError, safe_open

        self.path = str(path)
        try:
            self._f = safe_open(self.path, framework="numpy")
            self._keys = list(self._f.keys())
            self._meta = {k: self._f.get_slice(k) for k in self._keys}
        except SafetensorError as e:
            raise SafetensorsError(f"{self.path}: truncated safetensors file or corrupt header "
                                   f"(safetensors: {e})") from None
        for k, sl in self._meta.items():
            if sl.get_dtype() not in ST_TO_NAME:
                raise SafetensorsError(f"{self.path}: tensor {k!r} has unsupported dtype {sl.get_dtype()!r}")

    def keys(self) -> list[str]:
        return list(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._meta[key].get_shape())

    def dtype(self, key: str) -> str:
        return ST_TO_NAME[self._meta[key].get_dtype()]

    def get(self, key: str) -> np.ndarray:
        return self._f.get_tensor(key)

    def close(self):
        self._f = self._meta = None


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
                # the caller's own specs and tensors disagree: a bug in the writer, not in anyone's file
                raise ValueError(f"{path}: tensor {name!r} is {t.shape} {t.dtype}, header says {shape} {dt}")
            f.write(memoryview(t.reshape(-1).view(np.uint8)))
