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

pow2 is the prediction server's challenge: bound to a user and a batch size, with its issue time:
    pow2|KIND|WORK|SUBS|BATCH|ISSUED|EXPIRES|USER|RAND|MAC
Its MAC is over the fields length-prefixed ("6:scrypt,4:1000,..."), so no text spliced across the
delimiters can carry another challenge's signature, whatever the fields hold; every field also has one
canonical spelling. For pow2, Challenge.resource is the user, so verify() binds the user as it binds
a pow1 resource.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import time
from dataclasses import dataclass

from common import checks
from common.errors import ConfigError
from pow.hashcash import Verdict
from pow.replay import ReplayGuard  # noqa: F401  (the spent set; re-exported for callers of this module)

KINDS = ("sha256", "scrypt")
VERSION = "pow1"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 9, 4, 1  # 128 * r * N bytes = 256 KiB per evaluation
SCRYPT_SALT = b"calibrated-pow"  # fixed salt: the challenge itself makes each input unique
SCRYPT_MEMORY_BYTES = 128 * SCRYPT_R * SCRYPT_N
SCRYPT_MAXMEM = 4 * SCRYPT_MEMORY_BYTES  # OpenSSL's memory ceiling for one evaluation
DEFAULT_TTL_S = 600  # a challenge is valid for ten minutes
FIELDS = 8  # fields of a pow1 challenge
VERSION2 = "pow2"  # the server's challenge: bound to a user and a batch size
FIELDS2 = 10
VERSION3 = "pow3"  # a top-up: a pow2 challenge also bound to one sealed batch (its challenge's token)
FIELDS3 = 11
MAX_BATCH = 100_000  # inputs per pow2 challenge, at most
MAX_SUBS = 4096  # sub-solutions per challenge, at most
MAX_WORK = 1e18  # expected evaluations, at most (about 30 years of a fast GPU on sha256)
MAX_SOLUTION_CHARS = FIELDS2 * 64 + MAX_SUBS * 33 + 512  # longer texts are rejected before any parsing
NONCE_HEX = 32  # a nonce has at most this many hex digits
# Every field has one canonical spelling, so no other text can carry the same signed challenge.
_RESOURCE = re.compile(r"[A-Za-z0-9._@:+/=-]{1,256}", re.ASCII)
_SUBS = re.compile(r"[1-9][0-9]{0,3}", re.ASCII)
_EXPIRES = re.compile(r"[1-9][0-9]{0,11}", re.ASCII)
_RAND = re.compile(r"[0-9a-f]{24}", re.ASCII)
_RAND2 = re.compile(r"[0-9a-f]{32}", re.ASCII)
_USER = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)  # a user name, as the server's accounts spell it
_BATCH = re.compile(r"[1-9][0-9]{0,5}", re.ASCII)
_MAC = re.compile(r"[0-9a-f]{64}", re.ASCII)
_TOKEN = _MAC  # a sealed batch's token: the SHA-256 (hex) of its challenge's text
_NONCES = re.compile(r"(0|[1-9a-f][0-9a-f]{0,%d})(,(0|[1-9a-f][0-9a-f]{0,%d}))*" % (NONCE_HEX - 1, NONCE_HEX - 1),
                     re.ASCII)


def _scrypt(data: bytes) -> bytes:
    return hashlib.scrypt(data, salt=SCRYPT_SALT, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32, maxmem=SCRYPT_MAXMEM)


DIGESTS = {"sha256": lambda data: hashlib.sha256(data).digest(), "scrypt": _scrypt}  # one per kind of KINDS


def digest(kind: str, data: bytes) -> bytes:
    """The puzzle's hash function."""
    if kind not in DIGESTS:
        raise ConfigError(f"unknown puzzle kind '{kind}'; valid kinds: {', '.join(KINDS)}")
    return DIGESTS[kind](data)


def threshold(work: float, subs: int) -> int:
    """Digests below this integer solve one sub-puzzle of expected work/subs evaluations."""
    per_sub = max(work / subs, 1.0)
    return min(2 ** 256, int(2 ** 256 / per_sub))


def _mac(key: bytes, body: str) -> str:
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def encode_fields(fields) -> bytes:
    """Length-prefixed fields ('4:pow2,6:scrypt,...'): one byte string for exactly one field tuple."""
    return b"".join(b"%d:%s," % (len(f), f) for f in (str(x).encode() for x in fields))


def _mac2(key: bytes, fields) -> str:
    return hmac.new(key, encode_fields(fields), hashlib.sha256).hexdigest()


def valid_user(name) -> bool:
    return isinstance(name, str) and _USER.fullmatch(name) is not None


def check_work(work: float, subs: int) -> tuple:
    """(work, subs) validated: work finite in [1, MAX_WORK], subs a whole number in [1, MAX_SUBS]."""
    return (checks.finite("work", work, lo=1, hi=MAX_WORK),
            checks.whole("sub-solutions", subs, lo=1, hi=MAX_SUBS))


def issue(*, key: bytes, resource: str, work: float, kind: str = "sha256", subs: int = 1,
          ttl_s: float = DEFAULT_TTL_S, now: float | None = None) -> str:
    """A signed challenge demanding `work` expected evaluations in `subs` sub-solutions."""
    if kind not in KINDS:
        raise ConfigError(f"unknown puzzle kind '{kind}'; valid kinds: {', '.join(KINDS)}")
    work, subs = check_work(work, subs)
    if not isinstance(resource, str) or not _RESOURCE.fullmatch(resource):
        raise ConfigError(f"the resource must be 1 to 256 characters of A-Z a-z 0-9 . _ @ : + / = -, got {resource!r}")
    if not isinstance(key, bytes) or not key:
        raise ConfigError("the key must be non-empty bytes")
    expires = int((now if now is not None else time.time()) + checks.finite("ttl_s", ttl_s, lo=1, hi=10 ** 7))
    body = f"{VERSION}|{kind}|{work!r}|{subs}|{expires}|{resource}|{os.urandom(12).hex()}"
    return f"{body}|{_mac(key, body)}"


def token_of(text: str) -> str:
    """The token a challenge is spent (and a sealed batch kept) under: SHA-256 of its text, in hex."""
    return hashlib.sha256(text.encode()).hexdigest()


def issue_bound(*, key: bytes, user: str, work: float, kind: str, subs: int, batch: int,
                ttl_s: float = DEFAULT_TTL_S, now: float | None = None, bind: str | None = None) -> str:
    """A signed pow2 challenge for `user`'s next batch of at most `batch` inputs; with `bind` (a sealed
    batch's token), a pow3 top-up that pays only for that batch."""
    if kind not in KINDS:
        raise ConfigError(f"unknown puzzle kind '{kind}'; valid kinds: {', '.join(KINDS)}")
    work, subs = check_work(work, subs)
    batch = checks.whole("batch size", batch, lo=1, hi=MAX_BATCH)
    if not valid_user(user):
        raise ConfigError(f"a user name is 1 to 64 characters of A-Z a-z 0-9 . _ -, got {user!r}")
    if not isinstance(key, bytes) or not key:
        raise ConfigError("the key must be non-empty bytes")
    issued = int(now if now is not None else time.time())
    expires = issued + int(checks.finite("ttl_s", ttl_s, lo=1, hi=10 ** 7))
    if bind is not None and (not isinstance(bind, str) or not _TOKEN.fullmatch(bind)):
        raise ConfigError("a top-up binds a sealed batch's token: 64 lowercase hex digits")
    fields = [VERSION2 if bind is None else VERSION3, kind, repr(work), str(subs), str(batch), str(issued),
              str(expires), user, *([] if bind is None else [bind]), os.urandom(16).hex()]
    return "|".join([*fields, _mac2(key, fields)])


@dataclass(frozen=True)
class Challenge:
    kind: str
    work: float
    subs: int
    expires: int
    resource: str  # pow2: the user
    rand: str
    text: str
    version: str = VERSION
    batch: int | None = None  # pow2 and pow3 only
    issued: int | None = None  # pow2 and pow3 only
    bind: str | None = None  # pow3 only: the sealed batch's token

    def signed_by(self, key: bytes) -> bool:
        """True when the MAC is this key's over the challenge's fields (constant-time compare)."""
        if not isinstance(key, bytes) or not key:
            return False
        parts = self.text.split("|")
        expected = (_mac2(key, parts[:-1]) if self.version in (VERSION2, VERSION3)
                    else _mac(key, self.text.rsplit("|", 1)[0]))
        return hmac.compare_digest(expected.encode(), parts[-1].encode())

    def unsolved(self, nonces_text: str) -> str | None:
        """None when the nonces solve every sub-puzzle, else the reason."""
        if not isinstance(nonces_text, str) or not _NONCES.fullmatch(nonces_text):
            return ("malformed: nonces must be comma-separated lowercase hexadecimal numbers "
                    f"without leading zeros, at most {NONCE_HEX} digits each")
        nonces = [int(x, 16) for x in nonces_text.split(",")]
        if len(nonces) != self.subs:
            return f"expected {self.subs} nonces, got {len(nonces)}"
        limit = threshold(self.work, self.subs)
        for i, nonce in enumerate(nonces):
            if int.from_bytes(digest(self.kind, sub_input(self.text, i, nonce)), "big") >= limit:
                return f"invalid: sub-solution {i} does not meet the target"
        return None


def _canonical_work(text: str) -> float | None:
    try:
        w = float(text)
    except ValueError:
        return None
    return w if repr(w) == text and math.isfinite(w) and 1 <= w <= MAX_WORK else None


def parse(text: str) -> Challenge | str:
    """A Challenge, or the reason why the text is not one. Never raises; accepts only canonical fields."""
    if not isinstance(text, str) or len(text) > MAX_SOLUTION_CHARS:
        return "malformed: a challenge is a text of at most a few kilobytes"
    parts = text.split("|")
    if parts[0] in (VERSION2, VERSION3):
        return _parse2(parts, text)
    if len(parts) != FIELDS or parts[0] != VERSION:
        return (f"malformed: a challenge has {FIELDS} '|'-separated fields starting with {VERSION} "
                f"(or {FIELDS2} starting with {VERSION2})")
    _, kind, work, subs, expires, resource, rand, mac = parts
    if kind not in KINDS:
        return "malformed: unknown puzzle kind"
    w = _canonical_work(work)
    if w is None or not _SUBS.fullmatch(subs) or int(subs) > MAX_SUBS or not _EXPIRES.fullmatch(expires):
        return f"malformed: work must be a number in 1..{MAX_WORK:g}, subs 1..{MAX_SUBS} and expiry a unix time"
    if not _RESOURCE.fullmatch(resource) or not _RAND.fullmatch(rand) or not _MAC.fullmatch(mac):
        return "malformed: bad resource, random or signature field"
    return Challenge(kind, w, int(subs), int(expires), resource, rand, text)


def _parse2(parts: list, text: str) -> Challenge | str:
    version, count = parts[0], FIELDS2 if parts[0] == VERSION2 else FIELDS3
    if len(parts) != count:
        return f"malformed: a {version} challenge has {count} '|'-separated fields"
    bind = parts.pop(8) if version == VERSION3 else None
    if bind is not None and not _TOKEN.fullmatch(bind):
        return "malformed: bad sealed-batch token"
    _, kind, work, subs, batch, issued, expires, user, rand, mac = parts
    if kind not in KINDS:
        return "malformed: unknown puzzle kind"
    w = _canonical_work(work)
    if w is None or not _SUBS.fullmatch(subs) or int(subs) > MAX_SUBS or not _BATCH.fullmatch(batch) \
            or int(batch) > MAX_BATCH or not _EXPIRES.fullmatch(issued) or not _EXPIRES.fullmatch(expires):
        return (f"malformed: work must be a number in 1..{MAX_WORK:g}, subs 1..{MAX_SUBS}, batch 1..{MAX_BATCH} "
                f"and times unix seconds")
    if not _USER.fullmatch(user) or not _RAND2.fullmatch(rand) or not _MAC.fullmatch(mac):
        return "malformed: bad user, random or signature field"
    if int(issued) > int(expires):
        return "malformed: issued after it expires"
    return Challenge(kind, w, int(subs), int(expires), user, rand, text, version, int(batch), int(issued), bind)


def split_solution(solution) -> tuple | str:
    """(challenge text, nonces text) of a solution, or the reason it is not one. Never raises."""
    if not isinstance(solution, str) or len(solution) > MAX_SOLUTION_CHARS or "|" not in solution:
        return "malformed: a solution is a challenge's fields plus '|nonces', at most a few kilobytes"
    return tuple(solution.rsplit("|", 1))


def sub_input(challenge_text: str, index: int, nonce: int) -> bytes:
    return f"{challenge_text}|{index}|{nonce:x}".encode()


def verify(solution: str, *, key: bytes, kind: str, resource: str, min_work: float, now: float | None = None,
           replay=None) -> Verdict:
    """Check a solution against what the server requires: its key, the puzzle kind, the resource and the
    least work. Never raises, whatever the text. Reasons: malformed, bad signature, expired, wrong kind,
    wrong resource, too easy, wrong number of nonces, an invalid sub-solution, or a replay. The same
    nonce may solve two sub-puzzles: each hashes its own index, so the inputs differ."""
    split = split_solution(solution)
    if isinstance(split, str):
        return Verdict(False, split)
    if isinstance(min_work, bool) or not (isinstance(min_work, (int, float)) and math.isfinite(min_work)
                                          and min_work >= 1):
        return Verdict(False, "server misconfigured: the least work required must be a finite number >= 1")
    if now is not None and (isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now)):
        return Verdict(False, "server misconfigured: the time must be a finite number of seconds")
    if not isinstance(kind, str) or not isinstance(resource, str):
        return Verdict(False, "server misconfigured: the kind and resource required must be text")
    text, nonces_text = split
    ch = parse(text)
    if isinstance(ch, str):
        return Verdict(False, ch)
    if not ch.signed_by(key):
        return Verdict(False, "bad signature: the challenge was not issued by this server or was altered")
    if (now if now is not None else time.time()) > ch.expires:
        return Verdict(False, "expired: the challenge's time to live has passed")
    if ch.kind != kind:
        return Verdict(False, f"wrong puzzle kind '{ch.kind}' (expected '{kind}')")
    if ch.resource != resource:
        return Verdict(False, f"wrong resource '{ch.resource}' (expected '{resource}')")
    if ch.work < min_work:
        return Verdict(False, f"too easy: work {ch.work:.6g} is below the required {min_work:.6g}")
    reason = ch.unsolved(nonces_text)
    if reason is not None:
        return Verdict(False, reason)
    if replay is not None and not replay.claim(text, ch.expires, now=now):
        return Verdict(False, "replayed: this challenge was already redeemed")
    return Verdict(True, "ok")
