"""The proof-of-work verifier: no default key, the puzzle kind is bound, the spent set is thread-safe,
and no text makes a verifier raise or a mutated solution verify (property-based, with hypothesis)."""
import datetime as dt
import os
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import UserError
from pow import hashcash, puzzles
from pow.keys import INSECURE_DEV_KEY, KEY_ENV, resolve_key
from pow.replay import ReplayGuard
from pow.solver import Solver

KEY = b"verifier-test-key-0123456789"
FAR = dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc).timestamp()
PROPS = settings(max_examples=300, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def solution():
    """A valid sha256 solution of 2^16 expected work in 2 sub-solutions: a random other nonce verifies with
    probability 2^-15 per sub-solution, so a mutation that verifies is a verifier bug, not luck."""
    ch = puzzles.issue(key=KEY, resource="alice", work=2.0 ** 16, kind="sha256", subs=2)
    with Solver(1) as s:
        return s.solve_target(ch)[0]


@pytest.fixture(scope="module")
def stamp():
    with Solver(1) as s:
        return s.solve_hashcash("alice", 18)[0]


def _verify(text, **kw):
    args = {"key": KEY, "kind": "sha256", "resource": "alice", "min_work": 2.0 ** 16, **kw}
    return puzzles.verify(text, **args)


# --- keys ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("given_key,env", [(None, None), ("", None), ("", ""), (None, "   ")])
def test_no_key_no_default(given_key, env):
    environ = {} if env is None else {KEY_ENV: env}
    with pytest.raises(UserError, match="no HMAC key.*secrets.token_hex"):
        resolve_key(given_key, environ=environ)


def test_dev_key_needs_the_explicit_flag(caplog):
    with pytest.raises(UserError, match="public development key"):
        resolve_key(INSECURE_DEV_KEY, environ={})
    with pytest.raises(UserError, match="at least 16"):
        resolve_key("short", environ={})
    assert resolve_key(None, insecure_dev=True, environ={}) == INSECURE_DEV_KEY.encode()
    assert "anyone can forge" in caplog.text
    assert resolve_key(None, environ={KEY_ENV: "x" * 20}) == b"x" * 20


def test_dev_key_challenge_is_refused_by_the_cli(cli):
    """A challenge signed with the old built-in key and expiring in 2100 no longer verifies by default."""
    ch = puzzles.issue(key=INSECURE_DEV_KEY.encode(), resource="client", work=1.0, kind="scrypt",
                       now=FAR - puzzles.DEFAULT_TTL_S)
    with Solver(1) as s:
        sol = s.solve_target(ch)[0]
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    import subprocess
    import sys

    from tests.conftest import ROOT
    def run(*a):
        return subprocess.run([sys.executable, str(ROOT / "main.py"), "pow-check", "--solution", sol, *a],
                              capture_output=True, text=True, env=env, timeout=120)
    refused = run()
    assert refused.returncode != 0 and "no HMAC key" in refused.stderr and "Traceback" not in refused.stderr
    dev = run("--insecure_dev_key")
    assert dev.returncode == 0 and "anyone can forge" in dev.stderr


# --- binding: kind, resource, least work --------------------------------------------------------

def test_verify_binds_kind_resource_and_work(solution):
    assert _verify(solution)
    assert "wrong puzzle kind 'sha256'" in _verify(solution, kind="scrypt").reason
    assert "wrong resource" in _verify(solution, resource="bob").reason
    assert "too easy" in _verify(solution, min_work=2.0 ** 17).reason
    for bad in (float("nan"), float("inf"), 0.5, "1"):
        assert "misconfigured" in _verify(solution, min_work=bad).reason
    with pytest.raises(TypeError):
        puzzles.verify(solution, key=KEY, resource="alice", min_work=1)  # the kind has no default


def test_issue_refuses_what_cannot_verify():
    for bad in ({"subs": 2.5}, {"subs": 0}, {"subs": True}, {"work": float("nan")}, {"work": 0},
                {"work": float("inf")}, {"resource": "a|b"}, {"resource": ""}, {"resource": "é"}):
        with pytest.raises(ValueError):
            puzzles.issue(**{"key": KEY, "resource": "alice", "work": 10.0, **bad})


# --- the spent set ------------------------------------------------------------------------------

def _filled(n):
    guard, now = ReplayGuard(), time.time()
    for i in range(n):
        guard.claim(f"old{i}", now + 3600, now=now)
    return guard


def test_replay_guard_one_winner_per_race():
    """16 threads race one token over a 200,000-entry spent set: exactly one acceptance, every trial."""
    guard = _filled(200_000)
    for trial in range(5):
        barrier, wins = threading.Barrier(16), []

        def race():
            barrier.wait()
            wins.append(guard.claim(f"race{trial}", time.time() + 600))

        threads = [threading.Thread(target=race) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert wins.count(True) == 1, (trial, wins.count(True))


def test_replay_guard_keeps_concurrent_claims():
    """Distinct tokens claimed concurrently are all kept: none of their replays is accepted."""
    guard = _filled(200_000)
    barrier = threading.Barrier(16)
    firsts = []

    def claim(i):
        barrier.wait()
        firsts.append(guard.claim(f"distinct{i}", time.time() + 600))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert firsts.count(True) == 16
    assert not any(guard.claim(f"distinct{i}", time.time() + 600) for i in range(16))
    assert len(guard) == 200_016


def test_replay_guard_forgets_only_expired():
    guard = ReplayGuard()
    assert guard.claim("a", 100.0, now=50.0) and guard.claim("b", 200.0, now=50.0)
    assert not guard.claim("a", 100.0, now=99.0)
    assert not guard.claim("late", 100.0, now=150.0)  # already expired: never accepted
    assert guard.claim("c", 300.0, now=150.0) and "a" not in guard and "b" in guard
    assert not guard.claim("nan", float("nan"), now=1.0)


def test_spent_stamp_is_refused(stamp):
    guard = ReplayGuard()
    assert hashcash.check(stamp, bits=18, resource="alice", replay=guard)
    again = hashcash.check(stamp, bits=18, resource="alice", replay=guard)
    assert not again and "spent" in again.reason


# --- never raise; no mutation verifies ----------------------------------------------------------

@pytest.mark.parametrize("text", [
    "", "|" * 8, "pow1|sha256|1.0|1|4102444800|alice|" + "0" * 24 + "|" + "é" * 64 + "|0",
    "pow1|sha256|1.0|²|4102444800|alice|" + "0" * 24 + "|" + "0" * 64 + "|0",
    "pow1|sha256|1.0|1|٤١٠|alice|" + "0" * 24 + "|" + "0" * 64 + "|0",
    "pow1|sha256|nan|1|4102444800|alice|" + "0" * 24 + "|" + "0" * 64 + "|0",
    "pow1|sha256|1e999|1|4102444800|alice|" + "0" * 24 + "|" + "0" * 64 + "|0",
    "x" * 10 ** 6,
])
def test_verifier_regressions_do_not_raise(text):
    assert not _verify(text)
    assert not hashcash.check(text.replace("|", ":")[:2000], bits=10)


@pytest.mark.parametrize("stamp_text", ["1:²:261130:r::a:b", "1:10:26113²:r::a:b", "1:10:261130:r::a:²",
                                        "1:١٠:261130:r::a:b", "1:0010:261130:r::a:b"])
def test_hashcash_regressions_do_not_raise(stamp_text):
    assert not hashcash.check(stamp_text, bits=10)


@PROPS
@given(st.text(max_size=400))
def test_verifiers_never_raise(text):
    assert not _verify(text)
    assert not hashcash.check(text, bits=10)
    parsed = puzzles.parse(text)
    assert isinstance(parsed, (str, puzzles.Challenge))


def _mutate(text, data):
    op = data.draw(st.sampled_from(["replace", "insert", "delete"]))
    i = data.draw(st.integers(0, len(text) - 1))
    if op == "delete":
        return text[:i] + text[i + 1:]
    ch = data.draw(st.one_of(st.characters(), st.sampled_from(list("0123456789abcdefABCDEF|:,.+-e ²٣"))))
    return text[:i] + ch + text[i + (op == "replace"):]


@PROPS
@given(st.data())
def test_no_mutated_solution_verifies(solution, data):
    mutated = _mutate(solution, data)
    if mutated != solution:
        verdict = _verify(mutated)
        assert not verdict, (mutated, verdict)


@PROPS
@given(st.data())
def test_no_mutated_stamp_verifies(stamp, data):
    mutated = _mutate(stamp, data)
    if mutated != stamp:
        verdict = hashcash.check(mutated, bits=18, resource="alice")
        assert not verdict, (mutated, verdict)


@PROPS
@given(work=st.floats(1, 1e18), subs=st.integers(1, puzzles.MAX_SUBS), resource=st.from_regex(r"[a-z0-9@.]{1,20}",
                                                                                              fullmatch=True))
def test_codec_round_trip(work, subs, resource):
    ch = puzzles.parse(puzzles.issue(key=KEY, resource=resource, work=work, subs=subs))
    assert isinstance(ch, puzzles.Challenge)
    assert (ch.work, ch.subs, ch.resource) == (work, subs, resource)


def test_verifier_arguments_fail_closed(solution, stamp):
    """A bad `now`, a naive datetime or a bool bit count is a rejection, never a crash or a pass."""
    for now in (float("nan"), float("inf"), "x", True):
        verdict = _verify(solution, now=now)
        assert not verdict and "misconfigured" in verdict.reason
    naive = dt.datetime.now()
    assert "misconfigured" in hashcash.check(stamp, bits=18, resource="alice", now=naive).reason
    assert "misconfigured" in hashcash.check(stamp, bits=True, resource="alice").reason


def test_replay_guard_survives_a_clock_stepping_back():
    guard = ReplayGuard()
    assert guard.claim("A", 2000.0, now=1000.0)
    assert guard.claim("B", 4000.0, now=3000.0)  # prunes A
    assert not guard.claim("A", 2000.0, now=1500.0)  # an older clock must not redeem A again
