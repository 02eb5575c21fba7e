"""Arrays on the wire: {"dtype", "shape", "data": base64 of the raw little-endian bytes}. Raw bytes
keep a batch of 64 MNIST images at 67 KB (uint8) instead of ~0.5 MB of JSON numbers, and decoding
them costs a copy, not a parse."""
from __future__ import annotations

import base64
import binascii
import math

import numpy as np

DTYPES = {"uint8": np.dtype("<u1"), "float32": np.dtype("<f4")}  # what a client may send


class TensorError(ValueError):
    """A payload that is not a valid batch; the message says what is wrong (the server answers 4xx)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def encode(x) -> dict:
    """The smallest exact encoding of `x`: float pixels that are all whole steps of 1/255 (images read
    from 8-bit files) travel as uint8, a quarter of the bytes, and decode to the same float32 values."""
    x = np.asarray(x)
    name = {np.dtype("uint8"): "uint8", np.dtype("float32"): "float32"}.get(x.dtype)
    if name is None:
        if np.issubdtype(x.dtype, np.floating):
            x, name = x.astype(np.float32), "float32"
        else:
            raise TensorError(f"inputs must be uint8 or floating-point arrays, not {x.dtype}")
    if name == "float32" and x.size:
        pixels = _as_pixels(x)
        if pixels is not None:
            x, name = pixels, "uint8"
    data = np.ascontiguousarray(x, dtype=DTYPES[name])
    return {"dtype": name, "shape": list(x.shape), "data": base64.b64encode(data.tobytes()).decode("ascii")}


def _as_pixels(x: np.ndarray) -> np.ndarray | None:
    """uint8 p with p / 255 == x exactly (float32, as the server divides), or None."""
    with np.errstate(invalid="ignore"):
        if not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
            return None
    pixels = np.rint(x * np.float32(255)).astype(np.uint8)
    return pixels if np.array_equal(pixels.astype(np.float32) / np.float32(255), x) else None


def decode(payload: dict, *, item_shape: tuple, max_batch: int) -> np.ndarray:
    """The batch in `payload`, checked: dtype, shape (N, *item_shape) with 1 <= N <= max_batch, the byte
    count, and finite values. Raises TensorError (413 for a batch above max_batch)."""
    dtype_name, shape, data = payload.get("dtype"), payload.get("shape"), payload.get("data")
    if dtype_name not in DTYPES:
        raise TensorError(f"inputs dtype must be one of {', '.join(DTYPES)}, not {dtype_name!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise TensorError("inputs shape must be a list of whole numbers")
    expected = list(item_shape)
    if len(shape) != 1 + len(expected) or shape[1:] != expected:
        raise TensorError(f"inputs shape must be [N, {', '.join(map(str, expected))}] for this model, got {shape}")
    n = shape[0]
    if n < 1:
        raise TensorError("a batch needs at least one input")
    if n > max_batch:
        raise TensorError(f"a batch of {n} inputs is larger than this challenge allows ({max_batch}); ask for a "
                          f"challenge with a larger batch, or split the inputs", status=413)
    if not isinstance(data, str):
        raise TensorError("inputs data must be base64 text")
    dtype = DTYPES[dtype_name]
    need = n * math.prod(expected) * dtype.itemsize
    if len(data) != 4 * ((need + 2) // 3):
        raise TensorError(f"inputs data holds the wrong number of bytes: shape {shape} of {dtype_name} needs {need}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise TensorError("inputs data is not valid base64") from None
    if len(raw) != need:
        raise TensorError(f"inputs data holds {len(raw)} bytes; shape {shape} of {dtype_name} needs {need}")
    x = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if dtype.kind == "f" and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
        raise TensorError("float inputs must be finite pixels in [0, 1] (NaN, infinities and values outside "
                          "[0, 1] are refused); or send uint8 pixels 0..255")
    return x
