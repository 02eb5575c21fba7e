"""Checkpoint I/O for victims: P holds the weights and metadata, P.json the metadata for people.

A raw state dict (such as the DFME ResNet34-8x teacher file) also loads, into the expected architecture.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from common.errors import UserError
from common.io import atomic_torch_save, atomic_write_text, safe_torch_load
from models import architectures

#: architecture of the victim and of the stolen copy, per input shape
DEFAULT_VICTIM_ARCH = {1: "mnistnet", 3: "resnet34_8x"}
DEFAULT_STOLEN_ARCH = {1: "mnistnet", 3: "resnet18"}


def default_victim_arch(spec) -> str:
    return DEFAULT_VICTIM_ARCH[spec.channels]


def default_stolen_arch(spec) -> str:
    return DEFAULT_STOLEN_ARCH[spec.channels]


def train_command(dataset: str, path) -> str:
    return f"python main.py train-victim --dataset {dataset} --victim_path {path}"


def save_victim(model: torch.nn.Module, path, meta: dict) -> None:
    """Save weights and metadata to P (atomically) and the metadata to P.json."""
    path = Path(path)
    atomic_torch_save({"state_dict": model.state_dict(), "meta": meta}, path)
    atomic_write_text(Path(str(path) + ".json"), json.dumps(meta, indent=2) + "\n")


def _create(dataset: str, path: Path) -> str:
    """The command that makes a victim for `dataset`: at `path` when nothing is there, else at a new path
    (what is there may be anything the user keeps, and train-victim never replaces it unasked)."""
    return train_command(dataset, "NEW.pt" if path.exists() or path.is_symlink() else path)


def _read(path: Path, dataset: str) -> tuple:
    """(state dict, metadata or None for a raw state dict) of a checkpoint file; UserError otherwise."""
    make = _create(dataset, path)
    if not path.exists():
        raise UserError(f"victim checkpoint {path} does not exist. Create it with: {make}")
    if not path.is_file():
        raise UserError(f"victim checkpoint {path} is not a file. Pass the checkpoint's path, or create one with: "
                        f"{make}")
    blob = safe_torch_load(path, "victim checkpoint", f"it is corrupt or not a checkpoint. Pass the right "
                                                      f"--victim_path, or train one at a new path with: {make}")
    if isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict) and isinstance(blob.get("meta"), dict):
        return blob["state_dict"], dict(blob["meta"])
    if isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        return blob, None
    raise UserError(f"{path} is not a victim checkpoint (no state dict inside). Pass the right --victim_path, or "
                    f"train one at a new path with: {make}")


def read_victim_meta(path) -> dict:
    """A checkpoint's metadata (empty for a raw state dict); UserError for a missing or corrupt file."""
    return _read(Path(path), "DATASET")[1] or {}


def check_victim(path, dataset: str) -> dict:
    """The metadata of the checkpoint at `path` (empty for a raw state dict), read and checked for `dataset`
    as load_victim reads it, without building the model (a server checks it before it makes any file)."""
    return _read_for(Path(path), dataset)[1] or {}


def _read_for(path: Path, dataset: str) -> tuple:
    """_read's (state dict, metadata or None), the checkpoint's metadata naming `dataset` where it has any."""
    state, meta = _read(path, dataset)
    if meta is not None and meta.get("dataset") != dataset:
        raise UserError(f"victim checkpoint {path} was trained on '{meta.get('dataset')}', not '{dataset}'. "
                        f"Pass the right --victim_path, or create one with: {_create(dataset, path)}")
    return state, meta


def load_victim(path, spec, *, architecture: str | None = None, device=torch.device("cpu")):
    """Load a victim for dataset `spec`; returns (model in eval mode, metadata).

    A missing file, a checkpoint of another dataset or architecture, or a corrupt file is a UserError
    whose message includes the command that creates the right checkpoint.
    """
    path = Path(path)
    state, meta = _read_for(path, spec.name)
    if meta is None:  # a raw state dict
        meta = {"dataset": spec.name, "architecture": architecture or default_victim_arch(spec)}
    arch = meta.get("architecture")
    if architecture is not None and arch != architecture:
        raise UserError(f"victim checkpoint {path} holds architecture '{arch}', not '{architecture}'. "
                        f"Create a matching one with: {_create(spec.name, path)} --victim_arch {architecture}")
    model = architectures.create(arch, spec)
    own = model.state_dict()
    for key in ("normalize.mean", "normalize.std"):  # raw third-party weights carry no normaliser
        state.setdefault(key, own[key])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"victim checkpoint {path} does not fit architecture '{arch}' for '{spec.name}' "
                        f"({str(exc).splitlines()[0]}). Create a matching one with: "
                        f"{_create(spec.name, path)}") from exc
    return model.to(device).eval(), meta
