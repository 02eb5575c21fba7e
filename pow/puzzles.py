"""Signed numeric-target puzzles: continuous difficulty, optional sub-solutions, a memory-hard variant.

A challenge is one line of '|'-delimited fields, signed with HMAC-SHA256 by the server's key:
    pow1|KIND|WORK|SUBS|EXPIRES|RESOURCE|RAND|MAC
KIND is sha256 or scrypt; WORK the expected number of hash evaluations in all (a real number, so
difficulty is continuous, not a 2x step per bit); SUBS the number of sub-solutions (each expects
WORK/SUBS evaluations, so the solve time's coefficient of variation is 1/sqrt(SUBS)); EXPIRES a unix
time. A solution appends '|' and SUBS comma-separated hex nonces. Sub-solution i with nonce x is valid
when H(challenge '|' i '|' x), read as a 256-bit integer, is below 2^256 * SUBS / WORK.
scrypt uses N=2^9, r=4, p=1 (256 KiB of memory per evaluation, under 1 ms here): a Python client
runs it at native speed, since each evaluation costs far more than Python's call overhead.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import os
import time
from dataclasses import dataclass

from pow.hashcash import Verdict

KINDS = ("sha256", "scrypt")
VERSION = "pow1"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 9, 4, 1  # 128 * r * N bytes = 256 KiB per evaluation
SCRYPT_SALT = b"calibrated-pow"  # fixed salt: the challenge itself makes each input unique
SCRYPT_MEMORY_BYTES = 128 * SCRYPT_R * SCRYPT_N
SCRYPT_MAXMEM = 4 * SCRYPT_MEMORY_BYTES  # OpenSSL's memory ceiling for one evaluation
DEFAULT_TTL_S = 600  # a challenge is valid for ten minutes
FIELDS = 8  # fields of a challenge


def digest(kind: str, data: bytes) -> bytes:
    """The puzzle's hash function."""
    if kind == "sha256":
        return hashlib.sha256(data).digest()
    if kind == "scrypt":
        return hashlib.scrypt(data, salt=SCRYPT_SALT, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32,
                              maxmem=SCRYPT_MAXMEM)
    raise ValueError(f"unknown puzzle kind '{kind}'; valid kinds: {', '.join(KINDS)}")


def threshold(work: float, subs: int) -> int:
    """Digests below this integer solve one sub-puzzle of expected work/subs evaluations."""
    per_sub = max(work / subs, 1.0)
    return min(2 ** 256, int(2 ** 256 / per_sub))


def _mac(key: bytes, body: str) -> str:
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def issue(*, key: bytes, resource: str, work: float, kind: str = "sha256", subs: int = 1,
          ttl_s: float = DEFAULT_TTL_S, now: float | None = None) -> str:
    """A signed challenge demanding `work` expected evaluations in `subs` sub-solutions."""
    if kind not in KINDS:
        raise ValueError(f"unknown puzzle kind '{kind}'; valid kinds: {', '.join(KINDS)}")
    if not (work >= 1 and math.isfinite(work)) or subs < 1:
        raise ValueError("work must be a finite number >= 1 and subs >= 1")
    if not resource or "|" in resource:
        raise ValueError("the resource must be non-empty and contain no '|'")
    expires = int((now if now is not None else time.time()) + ttl_s)
    body = f"{VERSION}|{kind}|{work!r}|{subs}|{expires}|{resource}|{os.urandom(12).hex()}"
    return f"{body}|{_mac(key, body)}"


@dataclass(frozen=True)
class Challenge:
    kind: str
    work: float
    subs: int
    expires: int
    resource: str
    rand: str
    text: str


def parse(text: str) -> Challenge | str:
    """A Challenge, or the reason why the text is not one."""
    parts = text.split("|") if isinstance(text, str) else []
    if len(parts) != FIELDS or parts[0] != VERSION:
        return f"malformed: a challenge has {FIELDS} '|'-separated fields starting with {VERSION}"
    _, kind, work, subs, expires, resource, rand, _ = parts
    if kind not in KINDS:
        return f"malformed: unknown puzzle kind '{kind}'"
    try:
        w, n, e = float(work), int(subs), int(expires)
    except ValueError:
        return "malformed: work, subs and expiry must be numbers"
    if not (w >= 1 and math.isfinite(w)) or n < 1:
        return "malformed: work must be >= 1 and subs >= 1"
    return Challenge(kind, w, n, e, resource, rand, text)


def sub_input(challenge_text: str, index: int, nonce: int) -> bytes:
    return f"{challenge_text}|{index}|{nonce:x}".encode()


def verify(solution: str, *, key: bytes, resource: str | None = None, min_work: float = 1.0,
           now: float | None = None, replay=None) -> Verdict:
    """Check a solution; never raises. Reasons: malformed, bad signature, expired, wrong resource,
    too easy, wrong number of nonces, an invalid sub-solution, or a replay. The same nonce may solve
    two sub-puzzles: each hashes its own index, so the inputs differ."""
    if not isinstance(solution, str) or solution.count("|") != FIELDS:
        return Verdict(False, f"malformed: a solution is the challenge's {FIELDS} fields plus '|nonces'")
    text, nonces_text = solution.rsplit("|", 1)
    ch = parse(text)
    if isinstance(ch, str):
        return Verdict(False, ch)
    body, mac = text.rsplit("|", 1)
    if not hmac.compare_digest(_mac(key, body), mac):
        return Verdict(False, "bad signature: the challenge was not issued by this server or was altered")
    if (now if now is not None else time.time()) > ch.expires:
        return Verdict(False, "expired: the challenge's time to live has passed")
    if resource is not None and ch.resource != resource:
        return Verdict(False, f"wrong resource '{ch.resource}' (expected '{resource}')")
    if ch.work < min_work:
        return Verdict(False, f"too easy: work {ch.work:.6g} is below the required {min_work:.6g}")
    try:
        nonces = [int(x, 16) for x in nonces_text.split(",")]
    except ValueError:
        return Verdict(False, "malformed: nonces must be comma-separated hexadecimal numbers")
    if len(nonces) != ch.subs:
        return Verdict(False, f"expected {ch.subs} nonces, got {len(nonces)}")
    limit = threshold(ch.work, ch.subs)
    for i, nonce in enumerate(nonces):
        if int.from_bytes(digest(ch.kind, sub_input(text, i, nonce)), "big") >= limit:
            return Verdict(False, f"invalid: sub-solution {i} does not meet the target")
    if replay is not None and not replay.claim(text, ch.expires):
        return Verdict(False, "replayed: this challenge was already redeemed")
    return Verdict(True, "ok")


class ReplayGuard:
    """Remembers redeemed challenges until they expire, so each is accepted once."""

    def __init__(self):
        self._seen: dict = {}

    def claim(self, challenge_text: str, expires: float, now: float | None = None) -> bool:
        now = now if now is not None else time.time()
        self._seen = {k: e for k, e in self._seen.items() if e >= now}
        if challenge_text in self._seen:
            return False
        self._seen[challenge_text] = expires
        return True
