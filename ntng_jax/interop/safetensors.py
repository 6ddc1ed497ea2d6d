"""The safetensors file format with numpy only (no torch, no `safetensors` package).

A file is: 8 bytes little-endian u64 N, then N bytes of JSON header
`{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {str: str}}`
(offsets relative to the byte after the header, tensors contiguous, C order, little-endian),
then the data. Readable by `safetensors.torch.load_file` and `safetensors.numpy.load_file`.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from ntng_jax.errors import UserError

_DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U8": np.uint8,
  "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class SafetensorsError(UserError, ValueError):
  """A file that is not a valid safetensors file (the message names it)."""


def save_file(tensors: dict[str, np.ndarray], path: str, metadata: dict | None = None) -> None:
  """Writes `tensors` (name -> numpy array) to `path` atomically (tensors in sorted name order)."""
  header, offset, arrays = {}, 0, []
  for name in sorted(tensors):
    a = np.asarray(tensors[name]).copy(order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
    if a.dtype not in _NAMES:
      raise TypeError(f"tensor {name!r} has dtype {a.dtype}, which safetensors cannot hold here.")
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    header[name] = {
      "dtype": _NAMES[np.dtype(a.dtype.name)],
      "shape": list(a.shape),
      "data_offsets": [offset, offset + a.nbytes],
    }
    offset += a.nbytes
    arrays.append(a)
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # align the data to 8 bytes, as the reference writer does
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for a in arrays:
      f.write(a.tobytes())
  os.replace(tmp, path)


def load_file(path: str) -> tuple[dict[str, np.ndarray], dict]:
  """(name -> numpy array, metadata) of a safetensors file."""
  with open(path, "rb") as f:
    data = f.read()
  if len(data) < 8:
    raise SafetensorsError(f"{path} is not a safetensors file (shorter than its header size).")
  (n,) = struct.unpack("<Q", data[:8])
  try:
    header = json.loads(data[8 : 8 + n])
  except (ValueError, UnicodeDecodeError):
    raise SafetensorsError(f"{path} is not a safetensors file (its header is not JSON).") from None
  metadata = header.pop("__metadata__", {}) or {}
  body = memoryview(data)[8 + n :]
  out = {}
  for name, info in header.items():
    if info.get("dtype") not in _DTYPES:
      raise SafetensorsError(
        f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}."
      )
    begin, end = info["data_offsets"]
    dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
    a = np.frombuffer(body[begin:end], dtype=dtype).reshape(info["shape"])
    out[name] = a.astype(a.dtype.newbyteorder("="))
  return out, metadata
