"""The server's HMAC key: from --key or $POW_SECRET; there is no built-in default.

Anyone who knows the key can forge challenges, so a command that issues or verifies refuses to run
without a real one. --insecure_dev_key allows a fixed, public key for local experiments, with a
warning each time.
"""
from __future__ import annotations

import logging
import os

from common.errors import UserError

KEY_ENV = "POW_SECRET"  # environment variable holding the server's HMAC key
MIN_KEY_CHARS = 16
INSECURE_DEV_KEY = "insecure-development-key"  # public: for --insecure_dev_key only
MAKE_KEY = "export POW_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')"

log = logging.getLogger(__name__)


def resolve_key(given: str | None, *, insecure_dev: bool = False, environ=None) -> bytes:
    """The key as bytes: `given`, else $POW_SECRET, else (only with insecure_dev) the public dev key."""
    environ = os.environ if environ is None else environ
    key = given if given not in (None, "") else environ.get(KEY_ENV, "")
    if not key.strip():
        if insecure_dev:
            log.warning("using the public development key: anyone can forge challenges; never use this in "
                        "production")
            return INSECURE_DEV_KEY.encode()
        raise UserError(f"no HMAC key: pass --key or set ${KEY_ENV} (empty values do not count). Make one with: "
                        f"{MAKE_KEY}. For local experiments only, --insecure_dev_key uses a public key")
    if key == INSECURE_DEV_KEY and not insecure_dev:
        raise UserError(f"the key given is the public development key; make a real one with: {MAKE_KEY}")
    if len(key) < MIN_KEY_CHARS and key != INSECURE_DEV_KEY:
        raise UserError(f"the HMAC key has {len(key)} characters; use at least {MIN_KEY_CHARS}. Make one with: "
                        f"{MAKE_KEY}")
    try:
        return key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(f"the HMAC key is not valid text (undecodable bytes); use printable text such as hex. "
                        f"Make one with: {MAKE_KEY}") from exc
