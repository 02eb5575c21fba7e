"""Atomic writes (temp file + rename) and the params.json written beside every run's CSV."""
from __future__ import annotations

import csv
import datetime
import errno
import fcntl
import hashlib
import json
import math
import numbers
import os
import pickle
import platform
import struct
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from common.errors import UserError


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


_UMASK = _umask()  # read once, at import (os.umask can only be read by setting it)


def tmp_prefix(path) -> str:
    """Temporary files of an atomic write of `path` are named PREFIX*.tmp in the same folder."""
    return f".{Path(path).name}."


def remove_stale_tmp(path) -> list:
    """Delete temporary files left by an atomic write of `path` that was killed; returns what was removed.

    Call it only while no other writer of `path` runs (extraction holds its folder's lock)."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(tmp_prefix(path) + "*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=tmp_prefix(path), suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # as a plain open() would create it, not mkstemp's 0600
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def strict_json(value):
    """`value` with every NaN or infinite number (a log column a run does not fill) as None, so that
    the JSON written from it is strict: NaN is no JSON, and jq or a browser refuse it."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        number = float(value)
        return number if math.isfinite(number) else None
    return value


def json_text(value) -> str:
    """The text of a JSON file this project writes: strict (see strict_json), indented, other objects as
    their str()."""
    return json.dumps(strict_json(value), indent=2, default=str, allow_nan=False) + "\n"


def atomic_write_text(path, text: str) -> None:
    """Write text so that readers see either the old file or the whole new one."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    _atomic(Path(path), write)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write bytes so that readers see either the old file or the whole new one."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
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
        "torch": str(torch.__version__),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_params_json(out_dir, settings: dict, command: str) -> Path:
    """Write out_dir/params.json atomically and return its path (for a folder the command owns)."""
    path = Path(out_dir) / "params.json"
    atomic_write_text(path, json_text(run_metadata(settings, command)))
    return path


def params_beside(csv_path) -> Path:
    """The settings record of a CSV the user named: OUT.params.json beside OUT.csv (never a shared
    params.json, which may belong to a run in the same folder)."""
    path = Path(csv_path)
    return path.with_name((path.stem if path.suffix else path.name) + ".params.json")


def write_params_beside(csv_path, settings: dict, command: str, **extra) -> Path:
    path = params_beside(csv_path)
    atomic_write_text(path, json_text({**run_metadata(settings, command), **extra}))
    return path


def check_outputs(outputs: dict, inputs: dict) -> None:
    """Before any work: every output is writable, and none lands on an input or on another output.
    outputs and inputs map a name for the message (a flag) to a path; None entries are skipped."""
    seen: dict = {}
    for name, path in inputs.items():
        if path is not None and Path(path).exists():
            seen[Path(path).resolve()] = (name, "input")
    for name, path in outputs.items():
        if path is None:
            continue
        ensure_writable(path, name)
        key = Path(path).resolve()
        if key in seen:
            other, role = seen[key]
            what = "the file given as " + other if role == "input" else "also where " + other + " goes"
            raise UserError(f"{name} {path} is {what}; no command writes over its inputs or writes two outputs "
                            f"to one file. Choose another path")
        seen[key] = (name, "output")


def ensure_writable(path, what: str = "output") -> Path:
    """Check, before any work, that `path` can be written: its nearest existing ancestor is a writable
    folder and `path` itself is not a folder. Creates nothing. UserError saying why otherwise."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink():
            raise UserError(f"{what} {path} cannot be written: {parent} is a broken link")
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{what} {path} cannot be written: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} cannot be written: no write permission in {parent}")
    return path


def ensure_writable_dir(path, what: str = "output folder") -> Path:
    """Like ensure_writable, for a folder that will receive files."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder; choose another path")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{what} {path} cannot be written: no write permission")
        return path
    ensure_writable(path, what)
    return path


def input_file(path, what: str) -> Path:
    """An existing regular file, or a UserError naming `what` and the problem."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path} does not exist")
    if not path.is_file():
        raise UserError(f"{what} {path} is not a file (a folder?); give the file's path")
    return path


def read_csv_file(path, what: str, **kwargs):
    """pandas.read_csv of an existing regular file; unreadable or empty files are a UserError."""
    import pandas as pd

    path = input_file(path, what)
    try:
        frame = pd.read_csv(path, **kwargs)
        if kwargs.get("header", "infer") is not None:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                header = next(csv.reader(fh), [])
            names = [h.strip() for h in header]
            twice = sorted({h for h in names if names.count(h) > 1})
            if twice:
                raise UserError(f"{what} {path} names the column(s) {', '.join(twice)} more than once; keep one")
        return frame
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} is not a readable CSV ({exc.__class__.__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc


def file_sha256(path) -> str:
    """Content hash of a file (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FolderLock:
    """An exclusive lock on a folder (fcntl.flock on FOLDER/.lock), released on close or process death."""

    def __init__(self, folder, what: str = "run"):
        self.path = Path(folder) / ".lock"
        self.what = what
        self._fh = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise UserError(f"another {self.what} is using {self.path.parent} now; wait for it to finish, "
                                f"or choose another --out_dir") from exc
            raise
        self._fh = fh
        return self

    def __exit__(self, *exc):
        if self._fh is not None:
            try:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            finally:
                self._fh.close()
                self._fh = None
        return False


#: what torch.load's restricted unpickler raises on a file that is not a readable, code-free checkpoint;
#: arbitrary bytes reach its opcode decoder, which fails with any of these (a decoding boundary)
LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, IndexError, ValueError, TypeError,
               AttributeError, struct.error, zipfile.BadZipFile, UnicodeDecodeError)


def safe_torch_load(path, what: str, fix: str):
    """torch.load with weights_only=True (tensors, numbers, strings and containers only: a crafted pickle
    cannot run code). A file that is not such a checkpoint is a UserError: what, why, and `fix`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except LOAD_ERRORS as exc:
        if isinstance(exc, pickle.UnpicklingError):
            why = ("not a checkpoint of tensors, numbers and strings only; other objects are never loaded, "
                   "since they could run code")
        else:
            why = f"{exc.__class__.__name__}: {(str(exc).strip().splitlines() or ['truncated'])[0][:120]}"
        raise UserError(f"{what} {path} cannot be read ({why}); {fix}") from exc
