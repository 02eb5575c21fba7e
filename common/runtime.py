"""Device choice and seeding."""
from __future__ import annotations

import random

import numpy as np
import torch

from common.errors import UserError


def resolve_device(name: str | None) -> torch.device:
    """'auto' (or None) picks CUDA when present, else the CPU; 'cuda' without a GPU is an error."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"--device '{name}' is not a device name; use auto, cpu, cuda or cuda:N") from exc
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device '{name}' is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for CUDA, but no CUDA device is present; use --device cpu")
    return device


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch so that a run repeats."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
