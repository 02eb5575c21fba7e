"""The server's HMAC key (from $POW_SECRET or a key file, never the public development key) and the
clients' API keys (random, shown once; only their SHA-256 is stored)."""
from __future__ import annotations

import hashlib
import os
import secrets
import stat
from pathlib import Path

from common.errors import UserError
from pow.keys import KEY_ENV, resolve_key

API_KEY_PREFIX = "pk_"
API_KEY_BYTES = 32
INIT_HINT = "python main.py serve-admin init --key_file PATH"


def check_new_key_file(path) -> Path:
    """`path` as a place for a new key file: it must not exist, and its folder must."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise UserError(f"{path} exists already; the server's key is never overwritten (challenges signed "
                        f"with it would break). Remove it yourself, or choose another --key_file")
    if not path.parent.is_dir():
        raise UserError(f"the folder of --key_file {path} does not exist; create it first")
    return path


def init_key_file(path) -> Path:
    """Write a new random HMAC key to `path`, readable by its owner only (0600); never overwrites."""
    path = check_new_key_file(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (secrets.token_hex(32) + "\n").encode())
    finally:
        os.close(fd)
    os.chmod(path, 0o600)
    return path


def server_key(key_file=None, environ=None) -> bytes:
    """The HMAC key: the contents of `key_file` when given, else $POW_SECRET. A key file that others can
    read, a missing key, a short key or the public development key are refused."""
    if key_file:
        path = Path(key_file)
        if path.is_dir():
            raise UserError(f"--key_file {path} is a folder; give the key file itself (made by: {INIT_HINT})")
        if not path.is_file():
            raise UserError(f"--key_file {path} does not exist; create one with: {INIT_HINT}")
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            raise UserError(f"--key_file {path} can be read by other users (mode "
                            f"{oct(stat.S_IMODE(path.stat().st_mode))}); run: chmod 600 {path}")
        try:
            text = path.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as exc:
            raise UserError(f"--key_file {path} is not text; create a new one with: {INIT_HINT}") from exc
        if not text:
            raise UserError(f"--key_file {path} is empty; create a new key file with: {INIT_HINT}")
        return resolve_key(text, insecure_dev=False, environ={})
    environ = os.environ if environ is None else environ
    if not environ.get(KEY_ENV, "").strip():
        raise UserError(f"the server needs an HMAC key: pass --key_file (create it with: {INIT_HINT}) or set "
                        f"${KEY_ENV}")
    return resolve_key(None, insecure_dev=False, environ=environ)


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(API_KEY_BYTES)


def hash_api_key(key: str) -> str:
    """The stored form of an API key. Keys are 256 random bits, so one SHA-256 suffices (no salt or
    stretching is needed against guessing)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
