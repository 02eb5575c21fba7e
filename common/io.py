"""Atomic writes (temp file + rename) and the params.json written beside every run's CSV."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    """Write text so that readers see either the old file or the whole new one."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    _atomic(Path(path), write)


def atomic_write_csv(path, frame) -> None:
    """Write a pandas DataFrame as CSV atomically."""
    atomic_write_text(path, frame.to_csv(index=False))


def atomic_torch_save(obj: Any, path) -> None:
    """torch.save through a temporary file and a rename."""
    _atomic(Path(path), lambda tmp: torch.save(obj, tmp))


def atomic_savefig(fig, path) -> None:
    """Save a matplotlib figure atomically (format from the file's suffix)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    _atomic(Path(path), lambda tmp: fig.savefig(tmp, format=fmt, dpi=120, bbox_inches="tight"))


def git_commit() -> str:
    """The commit of the code that runs, with '+dirty' when the tree has changes; 'unknown' outside git."""
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_metadata(settings: dict, command: str) -> dict:
    """Every setting plus what is needed to repeat the run: seed, git commit, versions, time."""
    return {
        "command": command,
        "settings": settings,
        "seed": settings.get("seed"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_params_json(out_dir, settings: dict, command: str) -> Path:
    """Write out_dir/params.json atomically and return its path."""
    path = Path(out_dir) / "params.json"
    atomic_write_text(path, json.dumps(run_metadata(settings, command), indent=2, default=str) + "\n")
    return path
