"""Hashcash stamps (round trip, interop with the hashcash tool, rejections) and signed target puzzles."""
import datetime as dt

import numpy as np
import pytest

from pow import hashcash, puzzles
from pow.solver import Solver
from pow.timing import PAPER_HASHCASH_SECONDS, PuzzlePricer

needs_tool = pytest.mark.skipif(hashcash.native_tool() is None, reason="hashcash tool not installed")
KEY = b"test-key-0123456789"


def mint(resource="alice@example.com", bits=10):
    with Solver(1) as s:
        return s.solve_hashcash(resource, bits)[0]


def test_stamp_round_trip():
    stamp = mint()
    fields = stamp.split(":")
    assert fields[0] == "1" and fields[1] == "10" and fields[3] == "alice@example.com"
    assert hashcash.check(stamp, bits=10, resource="alice@example.com")
    assert hashcash.leading_zero_bits(__import__("hashlib").sha1(stamp.encode()).digest()) >= 10


@needs_tool
def test_interop_with_hashcash_tool():
    ours = mint(bits=12)
    assert hashcash.native_check(ours, bits=12, resource="alice@example.com")
    theirs = hashcash.native_mint("bob@example.com", 12)
    assert hashcash.check(theirs, bits=12, resource="bob@example.com")
    assert not hashcash.native_check(ours, bits=12, resource="bob@example.com")


@pytest.mark.parametrize("mutate,needle", [
    (lambda s: s.replace("alice", "mallory"), "wrong resource"),
    (lambda s: s[:-1] + ("A" if s[-1] != "A" else "B"), "invalid"),
    (lambda s: s.replace("1:10:", "1:9:", 1), "too easy"),
    (lambda s: s.replace("1:10:", "1:14:", 1), "invalid"),
    (lambda s: "garbage", "malformed"),
    (lambda s: s.replace("1:", "2:", 1), "version"),
    (lambda s: ":".join(s.split(":")[:2] + ["99x"] + s.split(":")[3:]), "malformed date"),
])
def test_rejections_have_reasons(mutate, needle):
    verdict = hashcash.check(mutate(mint()), bits=10, resource="alice@example.com")
    assert not verdict and needle in verdict.reason


def test_expired_and_future_stamps():
    stamp = mint()
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=40)
    assert "expired" in hashcash.check(stamp, bits=10, now=later).reason
    earlier = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)
    assert "future" in hashcash.check(stamp, bits=10, now=earlier).reason


def test_check_never_raises_on_junk():
    for junk in [None, 5, "", "::::::", "1:x:y:z:a:b:c", "1:10:261301:r::a:b"]:
        assert not hashcash.check(junk, bits=10)


def solve(work, kind="sha256", subs=1, workers=1, resource="alice"):
    ch = puzzles.issue(key=KEY, resource=resource, work=work, kind=kind, subs=subs)
    with Solver(workers) as s:
        return ch, *s.solve_target(ch)


def test_target_round_trip_and_replay():
    _, solution, _ = solve(500, subs=3)
    guard = puzzles.ReplayGuard()
    assert puzzles.verify(solution, key=KEY, kind="sha256", resource="alice", min_work=500, replay=guard)
    assert "replayed" in puzzles.verify(solution, key=KEY, kind="sha256", resource="alice", min_work=1,
                                        replay=guard).reason


def test_scrypt_round_trip():
    _, solution, _ = solve(4, kind="scrypt", workers=2)
    assert puzzles.verify(solution, key=KEY, kind="scrypt", resource="alice", min_work=4)


@pytest.mark.parametrize("change,kwargs,needle", [
    (lambda s: s, {"key": b"other"}, "bad signature"),
    (lambda s: s.replace("|sha256|500.0|", "|sha256|5.0|"), {}, "bad signature"),
    (lambda s: s, {"resource": "bob"}, "wrong resource"),
    (lambda s: s, {"min_work": 1000}, "too easy"),
    (lambda s: s, {"now": 4e9}, "expired"),
    (lambda s: s.rsplit("|", 1)[0] + "|zz", {}, "malformed"),
    (lambda s: s.rsplit("|", 1)[0] + "|1,2", {}, "expected 1 nonces"),
    (lambda s: "pow1|x", {}, "malformed"),
])
def test_target_rejections(change, kwargs, needle):
    _, solution, _ = solve(500)
    args = {"key": KEY, "kind": "sha256", "resource": "alice", "min_work": 1, **kwargs}
    verdict = puzzles.verify(change(solution), **args)
    assert not verdict and needle in verdict.reason


def test_invalid_nonce():
    ch = puzzles.issue(key=KEY, resource="alice", work=1e9, subs=2)
    assert "invalid: sub-solution 0" in puzzles.verify(ch + "|1,2", key=KEY, kind="sha256", resource="alice",
                                                       min_work=1).reason


def test_difficulty_is_continuous():
    """The mean number of evaluations matches W for a non-power-of-two W (geometric distribution)."""
    for work in (37.5, 150.0):
        ch_tries = []
        for _ in range(400):
            ch = puzzles.issue(key=KEY, resource="alice", work=work)
            limit = puzzles.threshold(work, 1)
            nonce = 0
            while int.from_bytes(puzzles.digest("sha256", puzzles.sub_input(ch, 0, nonce)), "big") >= limit:
                nonce += 1
            ch_tries.append(nonce + 1)
        mean, sd = np.mean(ch_tries), np.sqrt(work * (work - 1)) / np.sqrt(len(ch_tries))
        assert abs(mean - work) < 4 * sd, (work, mean)


def test_sub_solutions_cut_variance():
    def cv(subs):
        totals = []
        for _ in range(150):
            ch = puzzles.issue(key=KEY, resource="alice", work=64, subs=subs)
            limit, total = puzzles.threshold(64, subs), 0
            for i in range(subs):
                nonce = 0
                while int.from_bytes(puzzles.digest("sha256", puzzles.sub_input(ch, i, nonce)), "big") >= limit:
                    nonce += 1
                total += nonce + 1
            totals.append(total)
        return np.std(totals) / np.mean(totals)
    assert cv(8) < 0.6 * cv(1)  # theory: 1/sqrt(8) = 0.35


def test_pricer_rounding():
    paper = PuzzlePricer("hashcash", rate=1e6, bits_seconds=PAPER_HASHCASH_SECONDS)
    assert paper.difficulty(2.9) == 20 and paper.difficulty(0.5) in (17, 18)
    assert paper.expected_seconds(20) == pytest.approx(2.927822)
    target = PuzzlePricer("sha256", rate=1e6)
    assert target.difficulty(0.0123) == pytest.approx(12300.0)
    assert target.expected_seconds(target.difficulty(0.5)) == pytest.approx(0.5)
