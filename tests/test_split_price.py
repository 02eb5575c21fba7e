"""The split-proof price (protocol v2): the split property, sealed answers and top-ups, the price checked
inside the commit under races, anonymous serving, replicas sharing one timing table.

The services run the real mnist-5k victim (tests/test_server.py's fixtures); the property test runs the
pricer alone, as a pure function of the query stream and its split.
"""
from __future__ import annotations

import os
import stat
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pow import calibration
from server import tensors
from server.app import create_app
from server.service import ApiError, address_range
from server.store import Revoked, open_store
from tests.server_helpers import BASELINE, race, state_url
from tests.test_server import (  # noqa: F401
    ITEM,
    Clock,
    add_user,
    body,
    buy,
    http,
    kind,
    make_service,
    paid,
    parts,
    pay_direct,
    post,
    service,
    solve,
)

# -- the split property, on the pricer alone -------------------------------------------------------------

@pytest.fixture(scope="module")
def pricer(tmp_path_factory):
    path = tmp_path_factory.mktemp("split") / "baseline.csv"
    path.write_text(BASELINE)
    calibrator = calibration.create(calibration.CalibrationConfig(), calibration.load_baseline(path,
                                                                                               cost_measure="entropy"))
    legit = np.random.default_rng(0).beta(0.3, 12.0, size=2000)  # a legitimate-looking per-query cost spread
    weights = calibration.QueryWeights(legit, max_weight=calibrator.max_factor / calibrator.budget)
    return calibration.SplitProofPricer(calibrator, weights, account_factor=4.0)


def pay_split(pricer, costs, assignment, batch) -> float:
    """Seconds paid for `costs` sent in batches of `batch`, batch i from key assignment[i]; every key's
    account prices its batch with the batch's own cost included (what the server does)."""
    accounts: dict = {}
    total = 0.0
    for i, start in enumerate(range(0, len(costs), batch)):
        part = costs[start:start + batch]
        q, c = accounts.get(assignment[i], (0, 0.0))
        q, c = q + len(part), c + float(np.sum(part))
        accounts[assignment[i]] = (q, c)
        total += pricer.seconds(part, queries=q, cost=c, answer_s=None)
    return total


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(0, 1), min_size=1, max_size=600), st.integers(1, 1024), st.integers(1, 256),
       st.randoms(use_true_random=False))
def test_no_split_over_keys_or_batches_pays_below_one_over_the_account_factor(pricer, costs, keys, batch, rnd):
    costs = np.array(costs)
    single = pay_split(pricer, costs, [0] * len(costs), 64)
    batches = -(-len(costs) // batch)
    split = pay_split(pricer, costs, [rnd.randrange(keys) for _ in range(batches)], batch)
    assert split >= single / pricer.account_factor * (1 - 1e-9)
    per_query = float(np.minimum(pricer.calibrator.max_factor, pricer.calibrator.budget * pricer.weights(costs)).sum())
    assert split >= per_query * pricer.query_time_s * (1 - 1e-9)  # the per-query part: no split lowers it


def test_the_share_is_reached_and_is_why_the_bound_is_stated(pricer):
    """A stream whose cost drifts just above the legitimate line: one key pays the account factor on top,
    1,024 keys pay the per-query part alone, so the bound 1/account_factor is tight, not loose."""
    costs = np.full(8192, pricer.weights.tau)  # at the tail's start: weight w0 each, excess grows with queries
    single = pay_split(pricer, costs, [0] * 128, 64)
    split = pay_split(pricer, costs, list(range(1024)) * 8, 1)
    assert split / single == pytest.approx(1 / pricer.account_factor, rel=0.05)


def test_a_legitimate_stream_pays_its_budget_and_a_costly_one_up_to_max_factor(pricer):
    rng = np.random.default_rng(1)
    legit = rng.beta(0.3, 12.0, size=4096)
    base = pricer.query_time_s * len(legit) * pricer.calibrator.budget
    assert pay_split(pricer, legit, [0] * 64, 64) / base == pytest.approx(1.0, abs=0.1)
    costly = rng.uniform(0.6, 1.0, size=4096)
    assert pay_split(pricer, costly, list(range(64)) * 64, 1) / base > 100


def test_a_nan_cost_never_prices_a_query_at_the_floor(pricer):
    with pytest.raises(ValueError):
        pricer.seconds(np.array([0.1, float("nan")]), queries=2, cost=0.2, answer_s=None)
    with pytest.raises(calibration.UserError):
        calibration.QueryWeights([0.1] * 5, max_weight=1000)


# -- the protocol: sealed answers, top-ups, replay, expiry, a crash, a resend ----------------------------

def noise(seed, n=64):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *ITEM), dtype=np.uint8)


def test_a_costly_batch_is_sealed_and_its_402_reveals_no_answer(http, service):
    key = add_user(service, "eve")
    solution, ch = paid(http, key, noise(0))
    r = post(http, key, body(solution, noise(0)))
    assert r.status_code == 402, r.text
    reply = r.json()
    assert "answers" not in reply and reply["topup"]["challenge"].startswith("pow3|sha256|")
    assert reply["owed"] > 10 * ch["work"] and reply["paid"] == pytest.approx(ch["work"])
    assert service.store.account("eve").queries == 0 and service.store.pending_count("eve") == 1


def test_a_top_up_pays_only_its_own_batch_and_only_once(http, service):
    key = add_user(service, "eve")
    sol_a, _ = paid(http, key, noise(1))
    sol_b, _ = paid(http, key, noise(2))
    due_a = post(http, key, body(sol_a, noise(1))).json()["topup"]
    assert post(http, key, body(sol_b, noise(2))).status_code == 402
    topup_a = solve(due_a["challenge"])
    wrong = http.post("/v1/topup", json={"solution": sol_b, "topup": topup_a}, headers={"X-API-Key": key})
    assert wrong.status_code == 403 and wrong.json()["error"] == "not_this_batch"
    ok = http.post("/v1/topup", json={"solution": sol_a, "topup": topup_a}, headers={"X-API-Key": key})
    assert ok.status_code == 200 and len(ok.json()["answers"]) == 64
    again = http.post("/v1/topup", json={"solution": sol_a, "topup": topup_a}, headers={"X-API-Key": key})
    assert again.status_code == 200 and again.json()["redelivered"] and again.json()["answers"] == ok.json()["answers"]
    row = service.store.account("eve")
    assert row.queries == 64 and row.batches == 1  # charged once
    service.store.revoke("eve")  # within the key cache's window: the redelivery reads the store itself
    gone = http.post("/v1/topup", json={"solution": sol_a, "topup": topup_a}, headers={"X-API-Key": key})
    assert gone.status_code == 403 and gone.json()["error"] == "revoked_api_key" and "answers" not in gone.json()


def test_a_top_up_sent_twice_to_a_still_sealed_batch_pays_once(parts, tmp_path):
    svc = make_service(parts, state_url("sqlite", tmp_path))
    try:
        user = svc.authenticate(add_user(svc, "eve"))
        solution = solve(svc.challenge(user, 64)["challenge"])
        with pytest.raises(ApiError) as sealed:
            svc.predict(user, solution, tensors.encode(noise(3)))
        due = sealed.value.extra["topup"]
        half = {**due, "work": due["work"] / 2}
        small = svc._issue(user, half["work"], 64, bind=due["challenge"].split("|")[8])  # half the debt
        text = solve(small["challenge"])
        for _ in range(2):  # the same top-up twice: the second adds nothing
            with pytest.raises(ApiError) as still:
                svc.topup(user, solution, text)
            assert still.value.status == 402
        assert svc.store.sealed(sealed.value.extra["topup"]["challenge"].split("|")[8]).paid == pytest.approx(
            sealed.value.extra["paid"] + small["work"])
    finally:
        svc.store.close()


def test_a_resend_of_a_sealed_batch_gets_the_same_debt_and_another_batch_is_refused(http, service):
    key = add_user(service, "eve")
    solution, _ = paid(http, key, noise(4))
    first = post(http, key, body(solution, noise(4)))
    again = post(http, key, body(solution, noise(4)))
    assert first.status_code == again.status_code == 402
    assert again.json()["owed"] == pytest.approx(first.json()["owed"]) and again.json()["paid"] == first.json()["paid"]
    other = post(http, key, body(solution, noise(5)))
    assert other.status_code == 409 and other.json()["error"] == "replayed"


def test_a_sealed_batch_expires_and_its_top_up_is_then_refused(parts, tmp_path):
    clock = Clock()
    svc = make_service(parts, state_url("sqlite", tmp_path), clock=clock, ttl_s=60.0)
    try:
        user = svc.authenticate(add_user(svc, "late"))
        solution = solve(svc.challenge(user, 64)["challenge"])
        with pytest.raises(ApiError) as sealed:
            svc.predict(user, solution, tensors.encode(noise(6)))
        topup = solve(sealed.value.extra["topup"]["challenge"])
        clock.now += 61
        with pytest.raises(ApiError) as late:
            svc.topup(user, solution, topup)
        assert late.value.status == 410 and svc.store.account("late").queries == 0
    finally:
        svc.store.close()


def test_a_crash_between_computing_and_paying_loses_nothing(parts, tmp_path):
    url = state_url("sqlite", tmp_path)
    first = make_service(parts, url)
    user = first.authenticate(add_user(first, "crash"))
    solution = solve(first.challenge(user, 64)["challenge"])
    with pytest.raises(ApiError) as sealed:
        first.predict(user, solution, tensors.encode(noise(7)))
    first.store.close()  # the server goes down with the batch sealed in its store
    second = make_service(parts, url)
    try:
        reply = second.topup(user, solution, solve(sealed.value.extra["topup"]["challenge"]))
        assert len(reply["answers"]) == 64 and second.store.account("crash").queries == 64
    finally:
        second.store.close()


def test_an_account_cannot_hoard_unpaid_sealed_batches(parts, tmp_path, monkeypatch):
    import server.store as store_module

    monkeypatch.setattr(store_module, "MAX_PENDING", 3)
    svc = make_service(parts, state_url("sqlite", tmp_path))
    try:
        user = svc.authenticate(add_user(svc, "hog"))
        codes = []
        for i in range(4):
            try:
                svc.predict(user, solve(svc.challenge(user, 64)["challenge"]), tensors.encode(noise(10 + i)))
            except ApiError as exc:
                codes.append(exc.status)
        assert codes == [402, 402, 402, 429]
        legit = svc.predict(user, solve(svc.challenge(user, 64)["challenge"]), tensors.encode(parts["images"][:64]))
        assert len(legit["answers"]) == 64 and svc.store.pending_count("hog") == 3  # paid in full: nothing to seal
    finally:
        svc.store.close()


def test_a_legitimate_batch_mostly_takes_one_round_trip(http, service, parts):
    key = add_user(service, "legit")
    trips = [buy(http, key, parts["images"][i:i + 64])[2] for i in range(0, 192, 64)]
    trips += [buy(http, key, parts["images"][i:i + 64])[2] for i in range(0, 192, 64)]
    assert sum(t == 1 for t in trips) >= len(trips) - 1, trips


# -- the price is checked inside the commit: hoarded challenges raced at once, on both stores -----------

@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_revoke_racing_a_commit_waits_for_it_or_refuses_it(tmp_path, kind):
    """The commit reads its user under a lock: a revoke that lands while a batch is being priced waits
    until that batch is settled (it was answered before the revoke), and never lets it commit after."""
    url = state_url(kind, tmp_path)
    settling, admin = open_store(url), open_store(url)
    times, inside = {}, threading.Event()

    def price(row):  # the service prices here, between the user check and the commit
        inside.set()
        time.sleep(1.0)
        times["priced"] = time.monotonic()
        return 1.0, 1.0

    def revoke():
        inside.wait(30)
        admin.revoke("mallory")
        times["revoked"] = time.monotonic()

    try:
        settling.add_user("mallory", "h" * 64, "mallory")
        racer = threading.Thread(target=revoke)
        racer.start()
        result = settling.settle(token="t1", expires=time.time() + 60, account="mallory", queries=8, answer_s=0.01,
                                 merge=lambda ledger: ledger, price=price, paid=10.0, request="r",
                                 response={"answers": [1]}, sealed={}, user="mallory")
        racer.join(30)
        assert times["revoked"] > times["priced"], "the revoke committed while the batch was being priced"
        assert result.queries == 8 and settling.account("mallory").queries == 8
        with pytest.raises(Revoked):  # and from now on the user's batches are refused
            settling.settle(token="t2", expires=time.time() + 60, account="mallory", queries=8, answer_s=0.01,
                            merge=lambda ledger: ledger, price=price, paid=10.0, request="r2",
                            response={"answers": [1]}, sealed={}, user="mallory")
    finally:
        settling.close()
        admin.close()


def test_hoarded_challenges_raced_at_once_pay_the_price_current_at_each_commit(parts, tmp_path, kind):
    svc = make_service(parts, state_url(kind, tmp_path))
    try:
        user = svc.authenticate(add_user(svc, "hoarder"))
        hoard = [solve(svc.challenge(user, 64)["challenge"]) for _ in range(12)]  # all at the newcomer's price
        outcome = race(12, lambda i: svc.predict(user, hoard[i], tensors.encode(noise(100 + i))))
        row = svc.store.account("hoarder")
        paid_work = sum(float(h.split("|")[2]) for h in hoard)
        assert outcome.count(402) + outcome.count(429) >= 11, outcome  # none was answered below its price
        from server.service import SLACK
        assert outcome.count(200) == 0 or row.priced * (1 - SLACK) <= paid_work + 1e-6
        assert row.credit >= -SLACK * row.priced - 1e-6  # what is owed is at most SLACK of a price
    finally:
        svc.store.close()


# -- anonymous serving ----------------------------------------------------------------------------------

def test_anonymous_clients_pay_by_their_queries_alone_per_address_range(parts, tmp_path):
    svc = make_service(parts, state_url("sqlite", tmp_path), anonymous=True)
    try:
        assert address_range("10.1.2.3") == address_range("10.1.2.200") == "anon-10.1.2.0-24"
        assert address_range("2001:db8::1").startswith("anon-2001-db8-") and address_range("junk") == "anon-unknown"
        client = svc.authenticate(None, "127.0.0.5")
        legit = pay_direct(svc, client, parts["images"][:64])
        assert len(legit["answers"]) == 64 and svc.pricer.factor(10 ** 6, 10 ** 6) == 1.0
        with TestClient(create_app(svc, max_body_bytes=400_000)) as http:
            ch = http.post("/v1/challenge", json={"batch": 8})
            assert ch.status_code == 200 and "|anon-testclient|" not in ch.json()["challenge"]
    finally:
        svc.store.close()


def test_anonymous_rate_limits_are_per_address_range(parts, tmp_path):
    svc = make_service(parts, state_url("sqlite", tmp_path), anonymous=True, rate_limit=(0.001, 2))
    try:
        for _ in range(2):
            svc.authenticate(None, "10.0.0.1")
        with pytest.raises(ApiError) as limited:
            svc.authenticate(None, "10.0.0.99")  # the same /24
        assert limited.value.status == 429
        svc.authenticate(None, "10.0.1.1")  # another range
    finally:
        svc.store.close()


# -- replicas: one timing table, challenges redeem anywhere ---------------------------------------------

def test_replicas_share_one_timing_table_and_redeem_each_others_challenges(parts, tmp_path, kind, monkeypatch):
    import pow.timing as timing
    import server.build as serve_build
    from main import parse

    url = state_url(kind, tmp_path)
    speeds = iter([(0.0, 1e5), (0.0, 2.6e5)])  # two machines, measured 2.6x apart
    monkeypatch.setattr(timing, "make_pricer", lambda puzzle, **kw: timing.PuzzlePricer(puzzle, rate=next(speeds)[1]))
    settings = parse(["serve", "--calibration", "x.csv", "--puzzle", "sha256"])
    stores = [open_store(url), open_store(url)]
    try:
        a, b = (serve_build.shared_pricer(serve_build.DeploymentConfig.of(settings.as_dict()), st_,
                                          1) for st_ in stores)
        assert a.rate == b.rate == 1e5
        one, two = make_service(parts, url, rate=a.rate), make_service(parts, url, rate=b.rate)
        try:
            user = one.authenticate(add_user(one, "roamer"))
            solution = solve(one.challenge(user, 8)["challenge"])
            assert len(pay_direct(two, user, parts["images"][:8])["answers"]) == 8
            try:  # one's challenge is this server's too: answered, or sealed for a top-up, never refused
                assert len(two.predict(user, solution, tensors.encode(parts["images"][8:16]))["answers"]) == 8
            except ApiError as exc:
                assert exc.status == 402, exc.body()
        finally:
            one.store.close()
            two.store.close()
    finally:
        for st_ in stores:
            st_.close()


def test_the_sqlite_state_is_created_readable_by_its_owner_only(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    store.close()
    assert stat.S_IMODE(os.stat(tmp_path / "state.db").st_mode) == 0o600
