"""Reader for the IDX format of (Fashion-)MNIST, plain or gzip-compressed."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from common.errors import UserError

_UBYTE = 0x08  # IDX type code for unsigned bytes, the only one (Fashion-)MNIST uses


def read_idx(path) -> np.ndarray:
    """Return the array stored in an IDX file; a clear UserError when the file is corrupt."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read {path}: {exc}. The file is damaged; delete it and fetch it again") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE:
        raise UserError(f"{path} is not an unsigned-byte IDX file (bad magic number); the file is corrupt")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path} is truncated inside its header; the file is corrupt")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - header != expected:
        raise UserError(f"{path} holds {len(raw) - header} data bytes but its header promises {expected} "
                        f"(shape {shape}); the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()
