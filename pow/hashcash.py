"""Hashcash version 1 stamps (SHA-1, leading zero bits counted in binary), as the paper used.

A stamp is  1:bits:date:resource:ext:rand:counter  with date YYMMDD[hhmm[ss]] (UTC), rand and counter
in the base-64 alphabet. It is valid when SHA-1 of the whole stamp starts with `bits` zero bits.
Stamps are interchangeable with the standard `hashcash` tool (Debian package hashcash): its
`hashcash -m` stamps pass check(), and `hashcash -c` accepts mint()'s.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from common.errors import ConfigError

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"  # hashcash's counter alphabet
RAND_CHARS = 16  # random-field length, as the hashcash tool uses
DEFAULT_EXPIRY_S = 28 * 24 * 3600  # the hashcash tool's default validity: 28 days
FUTURE_GRACE_S = 2 * 24 * 3600  # clock skew tolerated for stamps dated in the future
MAX_BITS = 160  # SHA-1 digest length
MAX_STAMP_CHARS = 1024  # longer texts are rejected before any parsing
_DATE = re.compile(r"([0-9]{6})([0-9]{4})?([0-9]{2})?", re.ASCII)
_FIELD = re.compile(r"[A-Za-z0-9+/=._@\-]*", re.ASCII)
_BITS = re.compile(r"[1-9][0-9]{0,2}", re.ASCII)


@dataclass(frozen=True)
class Verdict:
    """Result of a check: ok, and why not when it is not."""
    ok: bool
    reason: str = "ok"
    bits: int = 0

    def __bool__(self):
        return self.ok


def leading_zero_bits(digest: bytes) -> int:
    """Number of leading zero bits of a digest."""
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def encode_b64int(value: int) -> str:
    """A non-negative integer in hashcash's base-64 alphabet (most significant digit first)."""
    out = ""
    while True:
        value, digit = divmod(value, 64)
        out = B64[digit] + out
        if value == 0:
            return out


def stamp_date(when: dt.datetime | None = None) -> str:
    when = when or dt.datetime.now(dt.timezone.utc)
    return when.strftime("%y%m%d")


def parse_date(text: str) -> dt.datetime | None:
    m = _DATE.fullmatch(text)
    if not m:
        return None
    fmt = "%y%m%d" + ("%H%M" if m.group(2) else "") + ("%S" if m.group(3) else "")
    try:
        return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def prefix(bits: int, resource: str, *, date: str | None = None, ext: str = "", rand: str | None = None) -> str:
    """Everything of a stamp but its counter (ends with ':')."""
    if not 0 < bits <= MAX_BITS:
        raise ConfigError(f"bits must lie in 1..{MAX_BITS}, got {bits}")
    if (not resource or ":" in resource + ext or not (resource + ext).isascii()
            or not (resource + ext).isprintable() or len(resource) > 256):
        raise ConfigError("the resource must be 1 to 256 printable ASCII characters, and neither resource nor "
                          "ext may contain ':'")
    rand = rand or "".join(B64[b % 64] for b in os.urandom(RAND_CHARS))
    return f"1:{bits}:{date or stamp_date()}:{resource}:{ext}:{rand}:"


def search(stamp_prefix: str, bits: int, start: int, count: int) -> int | None:
    """Try counters start..start+count-1; return the first whose stamp has `bits` zero bits, else None.

    The stamp is stamp_prefix + encode_b64int(counter).
    """
    base = hashlib.sha1(stamp_prefix.encode())
    shift = 160 - bits
    for counter in range(start, start + count):
        h = base.copy()
        h.update(encode_b64int(counter).encode())
        if int.from_bytes(h.digest(), "big") >> shift == 0:
            return counter
    return None


def check(stamp: str, *, bits: int, resource: str | None = None, now: dt.datetime | None = None,
          expiry_s: float = DEFAULT_EXPIRY_S, replay=None) -> Verdict:
    """Verify a stamp; never raises, whatever the text. Reasons: malformed, wrong version, too few bits
    asked, wrong resource, expired, dated in the future, a hash without enough leading zero bits, or
    (with a `replay` guard, the spent set) a stamp already spent. A spent stamp stays spent until it
    expires."""
    if not isinstance(stamp, str) or len(stamp) > MAX_STAMP_CHARS or stamp.count(":") != 6:
        return Verdict(False, "malformed: a version-1 stamp has 7 ':'-separated fields")
    if not stamp.isascii() or not stamp.isprintable():
        return Verdict(False, "malformed: a stamp is printable ASCII")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 0 < bits <= MAX_BITS:
        return Verdict(False, f"server misconfigured: the bits required must lie in 1..{MAX_BITS}")
    if not isinstance(expiry_s, (int, float)) or not (math.isfinite(expiry_s) and expiry_s > 0):
        return Verdict(False, "server misconfigured: the expiry must be a finite number of seconds > 0")
    if now is not None and (not isinstance(now, dt.datetime) or now.tzinfo is None):
        return Verdict(False, "server misconfigured: the time must be a timezone-aware datetime")
    ver, claimed, date, res, ext, rand, counter = stamp.split(":")
    if ver != "1":
        return Verdict(False, f"unsupported version '{ver}' (only hashcash version 1)")
    if not _BITS.fullmatch(claimed) or not 0 < int(claimed) <= MAX_BITS:
        return Verdict(False, f"malformed bits field '{claimed}'")
    if not counter or not _FIELD.fullmatch(counter) or not _FIELD.fullmatch(rand):
        return Verdict(False, "malformed rand or counter field")
    when = parse_date(date)
    if when is None:
        return Verdict(False, f"malformed date '{date}' (expected YYMMDD[hhmm[ss]])")
    if resource is not None and res != resource:
        return Verdict(False, f"wrong resource '{res}' (expected '{resource}')")
    if int(claimed) < bits:
        return Verdict(False, f"too easy: the stamp claims {claimed} bits, {bits} are required")
    now = now or dt.datetime.now(dt.timezone.utc)
    age = (now - when).total_seconds()
    if age > expiry_s:
        return Verdict(False, f"expired: dated {date}, older than {expiry_s / 86400:g} days")
    if age < -FUTURE_GRACE_S:
        return Verdict(False, f"dated in the future ({date})")
    got = leading_zero_bits(hashlib.sha1(stamp.encode()).digest())
    if got < int(claimed):
        return Verdict(False, f"invalid: the hash has {got} leading zero bits, the stamp claims {claimed}", got)
    if replay is not None and not replay.claim(stamp, when.timestamp() + expiry_s, now=now.timestamp()):
        return Verdict(False, "spent: this stamp was already redeemed", got)
    return Verdict(True, "ok", got)


def native_tool() -> str | None:
    """Path of the `hashcash` program, if installed."""
    return shutil.which("hashcash")


def native_mint(resource: str, bits: int, *, timeout: float | None = None) -> str:
    """Mint with the native hashcash tool (single core, optimised SHA-1)."""
    tool = native_tool()
    if tool is None:
        raise RuntimeError("the hashcash tool is not installed (Debian package hashcash)")
    out = subprocess.run([tool, "-m", "-q", "-b", str(bits), "-r", resource], capture_output=True, text=True,
                         timeout=timeout, check=True)
    return out.stdout.strip()


def native_check(stamp: str, *, bits: int, resource: str) -> bool:
    """Ask the native tool whether it accepts a stamp."""
    tool = native_tool()
    if tool is None:
        raise RuntimeError("the hashcash tool is not installed (Debian package hashcash)")
    out = subprocess.run([tool, "-c", "-b", str(bits), "-r", resource, stamp], capture_output=True, text=True,
                         timeout=30)
    return "check: ok" in out.stdout + out.stderr


def native_rate() -> float:
    """The native tool's own speed test: SHA-1 preimage tests per second (one core)."""
    tool = native_tool()
    if tool is None:
        raise RuntimeError("the hashcash tool is not installed (Debian package hashcash)")
    out = subprocess.run([tool, "-s", "-q"], capture_output=True, text=True, timeout=120, check=True)
    return float(out.stdout.strip().split()[-1])
