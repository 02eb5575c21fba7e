"""The prediction API: protocol, security (each attack accepted 0 times), stores, accounts, client.

Most tests run the real FastAPI app in-process (TestClient) over a real mnist-5k victim; the stores
run on SQLite and on PostgreSQL (the cluster .ci/run starts). Challenges are cheap here (a pricer with
a slow assumed client), so solving takes milliseconds.
"""
from __future__ import annotations

import base64
import json
import threading

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import ConfigError
from data.registry import load_splits, to_float
from models.checkpoint import load_victim
from models.oracle import Victim
from pow import calibration, puzzles
from pow.solver import Solver
from pow.timing import PuzzlePricer
from privacy import accountants
from server import tensors
from server.app import create_app
from server.keys import hash_api_key, new_api_key
from server.service import ApiError, PredictionService, ServiceConfig
from server.store import open_store
from tests.server_helpers import BASELINE, race, state_url

KEY = b"k" * 32
ITEM = (1, 28, 28)


@pytest.fixture(scope="module")
def parts(victim_path, tmp_path_factory):
    splits = load_splits("mnist-5k", "data")
    model, _ = load_victim(victim_path, splits.spec, device=torch.device("cpu"))
    victim = Victim(model, device=torch.device("cpu"))
    make_ledger = accountants.ledger_factory(victim.representations(splits.victim_x), splits.victim_y,
                                             num_classes=10, k=300, sigma=28.0, delta=1e-5)
    path = tmp_path_factory.mktemp("baseline") / "baseline.csv"
    path.write_text(BASELINE)
    calibrator = calibration.create(calibration.CalibrationConfig(), calibration.load_baseline(path,
                                                                                               cost_measure="entropy"))
    legit = make_ledger().add(victim.log_probs(splits.eval_x))["entropy_cost"]
    weights = calibration.QueryWeights(legit, max_weight=calibrator.max_factor / calibrator.budget)
    return {"victim": victim, "make_ledger": make_ledger, "calibrator": calibrator, "weights": weights,
            "images": splits.pool_x[:200].numpy()}


class Clock:
    def __init__(self):
        import time
        self.now = time.time()

    def __call__(self):
        return self.now


def make_service(parts, url, *, rate=1e5, clock=None, account_factor=2.0, rate_limit=None, **config):
    store = open_store(url)
    # the limiter runs on the service's clock, frozen here: without a rate_limit to test, no bucket may run dry
    config["rate"], config["burst"] = rate_limit if rate_limit is not None else (1e9, 10 ** 9)
    anonymous = bool(config.get("anonymous"))
    pricer = calibration.SplitProofPricer(parts["calibrator"], parts["weights"], account_factor=account_factor,
                                          anonymous=anonymous)
    service = PredictionService(victim=parts["victim"], item_shape=ITEM, make_ledger=parts["make_ledger"],
                                pricer=pricer, puzzle_pricer=PuzzlePricer("sha256", rate=rate),
                                store=store, key=KEY, clock=clock or Clock(),
                                config=ServiceConfig(puzzle="sha256", max_batch=64, **config))
    return service


def add_user(service, name, group=None):
    key = new_api_key()
    service.store.add_user(name, hash_api_key(key), group or name)
    return key


@pytest.fixture(params=["sqlite", "postgres"])
def kind(request):
    return request.param


@pytest.fixture
def service(parts, tmp_path):
    svc = make_service(parts, state_url("sqlite", tmp_path))
    yield svc
    svc.store.close()


@pytest.fixture
def http(service):
    app = create_app(service, max_body_bytes=200_000)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


SOLVER = Solver(1)


def solve(text: str) -> str:
    return SOLVER.solve_target(text)[0]


def body(solution, x):
    return {"solution": solution, "inputs": tensors.encode(x)}


def paid(http, key, x, batch=None):
    ch = http.post("/v1/challenge", json={"batch": batch or len(x)}, headers={"X-API-Key": key}).json()
    return solve(ch["challenge"]), ch


def post(http, key, payload):
    return http.post("/v1/predict", json=payload, headers={"X-API-Key": key})


def buy(http, key, x, batch=None):
    """Answers for x, paying its challenge and every top-up: (the 200 reply, the challenges' work, trips)."""
    solution, ch = paid(http, key, x, batch)
    work, trips = ch["work"], 1
    r = post(http, key, body(solution, x))
    while r.status_code == 402:
        due = r.json()["topup"]
        work, trips = work + due["work"], trips + 1
        r = http.post("/v1/topup", json={"solution": solution, "topup": solve(due["challenge"])},
                      headers={"X-API-Key": key})
    return r, work, trips


# -- the protocol ----------------------------------------------------------------------------------------

def test_a_paid_batch_is_answered_charged_and_priced_from_its_account(http, service, parts):
    key = add_user(service, "alice")
    x = parts["images"][:64]
    solution, ch = paid(http, key, x)
    assert ch["challenge"].startswith("pow2|sha256|") and ch["batch"] == 64 and ch["work"] >= 1
    r = post(http, key, body(solution, x))
    assert r.status_code == 200, r.text
    labels = np.array(r.json()["answers"])
    assert (labels == parts["victim"].log_probs(torch.from_numpy(x)).argmax(1).numpy()).all()
    account = http.get("/v1/account", headers={"X-API-Key": key}).json()
    ledger = parts["make_ledger"]()
    ledger.add(parts["victim"].log_probs(torch.from_numpy(x)), images=torch.from_numpy(x))
    assert account["queries"] == 64 and account["batches"] == 1
    assert account["costs"]["entropy_cost"] == pytest.approx(ledger.totals()["entropy_cost"], rel=1e-9)
    assert account["costs"]["privacy_cost"] == pytest.approx(ledger.totals()["privacy_cost"], rel=1e-9)
    assert account["next"]["work"] > 0


def test_an_attacker_pays_more_per_batch_than_a_legitimate_user(http, service, parts):
    legit, thief = add_user(service, "legit"), add_user(service, "thief")
    rng = np.random.default_rng(0)
    work = {"legit": 0.0, "thief": 0.0}
    for i in range(3):
        r, w, _ = buy(http, legit, parts["images"][64 * i:64 * (i + 1)])
        assert r.status_code == 200
        work["legit"] += w
        noise = rng.integers(0, 256, size=(64, *ITEM), dtype=np.uint8)  # out-of-distribution: costly
        r, w, trips = buy(http, thief, noise)
        assert r.status_code == 200 and (i > 0 or trips == 2)  # its first batch is sealed until topped up
        work["thief"] += w
    a = http.get("/v1/account", headers={"X-API-Key": legit}).json()
    b = http.get("/v1/account", headers={"X-API-Key": thief}).json()
    assert b["costs"]["entropy_cost"] > 3 * a["costs"]["entropy_cost"]
    assert b["next"]["work"] > 3 * a["next"]["work"]
    assert work["thief"] > 50 * work["legit"] and b["priced"] <= work["thief"] + 1e-6


def test_openapi_documents_the_versioned_protocol(http):
    schema = http.get("/openapi.json").json()
    assert {"/v1/challenge", "/v1/predict", "/v1/account", "/healthz"} <= set(schema["paths"])
    assert "409" in schema["paths"]["/v1/predict"]["post"]["responses"]
    predict = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert predict["required"] == ["solution", "inputs"] and set(predict["properties"]["inputs"]["properties"]) == {
        "dtype", "shape", "data"}  # parsed in the worker thread, documented in place
    assert http.get("/healthz").json()["status"] == "ok"


def test_a_resent_request_is_redelivered_once_charged(http, service, parts):
    key = add_user(service, "retry")
    x = parts["images"][:32]
    payload = body(paid(http, key, x)[0], x)
    first, again = post(http, key, payload), post(http, key, payload)
    assert first.status_code == again.status_code == 200 and again.json()["redelivered"]
    assert again.json()["answers"] == first.json()["answers"]
    assert http.get("/v1/account", headers={"X-API-Key": key}).json()["queries"] == 32


def test_a_service_on_another_store_charges_that_store_only(service, parts, tmp_path):
    from server.store import open_store
    (tmp_path / "other").mkdir()
    other = open_store(state_url("sqlite", tmp_path / "other"))
    try:
        twin = service.on_store(other)
        assert twin.store is other and service.store is not other and twin.victim is service.victim
        key = new_api_key()
        other.add_user("twin", hash_api_key(key), "twin")
        user = twin.authenticate(key)
        x = parts["images"][:8]
        twin.predict(user, solve(twin.challenge(user, len(x))["challenge"]), tensors.encode(x))
        assert other.account("twin").queries == 8 and service.store.account("twin").queries == 0
    finally:
        other.close()


# -- security: every attack is accepted 0 times ------------------------------------------------------------

def _fields(text):
    return text.split("|")


def test_a_forged_signature_is_refused(http, service, parts):
    key = add_user(service, "mallory")
    x = parts["images"][:8]
    _, ch = paid(http, key, x)
    fields = _fields(ch["challenge"])
    forged = "|".join(fields[:-1] + ["0" * 64])
    r = post(http, key, body(solve(forged), x))
    assert r.status_code == 403 and r.json()["error"] == "bad_signature"


TAMPER = {1: "scrypt", 2: "1.0", 3: "2", 4: "63", 5: "1000000000", 6: "9999999999", 7: "bob", 8: "0" * 32}


@pytest.mark.parametrize("index", sorted(TAMPER))
def test_each_signed_field_tampered_is_refused(http, service, parts, index):
    key = add_user(service, "bob")  # the user field is tampered to another real user's name
    add_user(service, "carol")
    x = parts["images"][:8]
    _, ch = paid(http, add_user(service, "carol2") if index == 7 else key, x, batch=8)
    fields = _fields(ch["challenge"])
    fields[index] = TAMPER[index] if fields[index] != TAMPER[index] else TAMPER[index] + "1"
    tampered = "|".join(fields)
    assert not isinstance(puzzles.parse(tampered), str), "the tampered challenge must parse, to reach the MAC"
    r = post(http, key, body(solve(tampered), x))
    assert r.status_code == 403 and r.json()["error"] == "bad_signature", r.text


def test_fields_spliced_across_the_delimiters_are_refused(http, service, parts):
    key = add_user(service, "splice")
    x = parts["images"][:8]
    _, ch = paid(http, key, x, batch=8)
    fields = _fields(ch["challenge"])
    reached = 0
    for i in range(1, len(fields) - 2):  # move one character across each delimiter, both ways
        for left, right in ((fields[i][:-1], fields[i][-1] + fields[i + 1]), (fields[i] + fields[i + 1][:1],
                                                                              fields[i + 1][1:])):
            spliced = "|".join(fields[:i] + [left, right] + fields[i + 2:])
            if isinstance(puzzles.parse(spliced), str):
                continue
            reached += 1
            r = post(http, key, body(solve(spliced), x))
            assert r.status_code == 403, (spliced, r.text)
    assert reached >= 1, "no splice parsed: the test would not reach the signature check"
    assert puzzles.encode_fields(["ab", "c"]) != puzzles.encode_fields(["a", "bc"])


def test_an_expired_challenge_is_refused(parts, tmp_path):
    clock = Clock()
    svc = make_service(parts, state_url("sqlite", tmp_path), clock=clock, ttl_s=60)
    try:
        key = add_user(svc, "late")
        user = svc.authenticate(key)
        ch = svc.challenge(user, 8)
        clock.now += 61
        with pytest.raises(ApiError) as err:
            svc.predict(user, solve(ch["challenge"]), tensors.encode(parts["images"][:8]))
        assert err.value.status == 410 and err.value.code == "expired"
    finally:
        svc.store.close()


def test_another_users_challenge_is_refused(http, service, parts):
    alice, bob = add_user(service, "alice"), add_user(service, "bob")
    x = parts["images"][:8]
    solution, _ = paid(http, alice, x)
    r = post(http, bob, body(solution, x))
    assert r.status_code == 403 and r.json()["error"] == "not_your_challenge"


def test_a_wrong_or_too_weak_solution_is_refused(parts, tmp_path):
    svc = make_service(parts, state_url("sqlite", tmp_path), rate=1e9)  # work in the millions
    try:
        key = add_user(svc, "cheap")
        user = svc.authenticate(key)
        ch = svc.challenge(user, 8)
        parsed = puzzles.parse(ch["challenge"])
        assert parsed.work > 1e5
        easy = puzzles.threshold(64.0, 1)  # a nonce good for 64 evaluations' work, not for the real work
        nonce = next(n for n in range(10 ** 6) if int.from_bytes(puzzles.digest("sha256", puzzles.sub_input(
            ch["challenge"], 0, n)), "big") < easy and parsed.unsolved(f"{n:x}") is not None)
        for nonces in (f"{nonce:x}", "0", "zz", "1,2", ""):
            with pytest.raises(ApiError) as err:
                svc.predict(user, f"{ch['challenge']}|{nonces}", tensors.encode(parts["images"][:8]))
            assert err.value.status in (400, 403), nonces
        assert svc.store.account("cheap").queries == 0
    finally:
        svc.store.close()


BAD_INPUTS = {
    "wrong-shape": lambda x: {**tensors.encode(x), "shape": [8, 1, 28, 27]},
    "wrong-rank": lambda x: tensors.encode(x.reshape(8, 784)),
    "wrong-dtype": lambda x: {**tensors.encode(x), "dtype": "int64"},
    "nan": lambda x: tensors.encode(np.where(np.arange(784).reshape(1, 1, 28, 28) == 5, np.nan,
                                             x / 255).astype(np.float32)),
    "inf": lambda x: tensors.encode(np.full(x.shape, np.inf, dtype=np.float32)),
    "short-data": lambda x: {**tensors.encode(x), "data": tensors.encode(x)["data"][:-8]},
    "not-base64": lambda x: {**tensors.encode(x), "data": "!" * len(tensors.encode(x)["data"])},
    "bool-shape": lambda x: {**tensors.encode(x), "shape": [True, 1, 28, 28]},
    "empty": lambda x: tensors.encode(x[:0]),
    "huge-floats": lambda x: tensors.encode(np.full(x.shape, 3e38, dtype=np.float32)),  # the model overflows
    "above-one": lambda x: tensors.encode(np.full(x.shape, 1000.0, dtype=np.float32)),  # costs 0: a free ride
    "negative": lambda x: tensors.encode(np.full(x.shape, -0.5, dtype=np.float32)),
    "batch-over-challenge": lambda x: tensors.encode(np.concatenate([x, x])),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_tensors_are_refused_and_charge_nothing(http, service, parts, case):
    key = add_user(service, "tensor")
    x = parts["images"][:8]
    solution, _ = paid(http, key, x, batch=8)
    r = post(http, key, {"solution": solution, "inputs": BAD_INPUTS[case](x)})
    assert r.status_code == (413 if case == "batch-over-challenge" else 422), r.text
    assert r.json()["error"] == "bad_inputs"
    assert service.store.account("tensor").queries == 0


def test_oversized_bodies_and_malformed_json_are_4xx(http, service, parts):
    key = add_user(service, "big")
    r = http.post("/v1/predict", content=b"{" + b" " * 300_000 + b"}", headers={"X-API-Key": key,
                                                                              "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"

    def chunks():
        for _ in range(40):
            yield b" " * 10_000
    r = http.post("/v1/predict", content=chunks(), headers={"X-API-Key": key, "content-type": "application/json"})
    assert r.status_code == 413
    for raw in (b"{bad", b"[]", b'{"solution": 5}', b"null", "{\"solution\": \"\udcff\"}".encode("utf-8",
                                                                                                 "surrogatepass")):
        r = http.post("/v1/predict", content=raw, headers={"X-API-Key": key, "content-type": "application/json"})
        assert 400 <= r.status_code < 500 and "error" in r.json(), raw
    r = http.post("/v1/predict", json={"solution": "x", "inputs": {"dtype": "uint8"}}, headers={"X-API-Key": key})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    assert {"body.inputs.shape: Field required", "body.inputs.data: Field required"} <= set(r.json()["detail"])
    valid = json.dumps(body(paid(http, key, parts["images"][:8])[0], parts["images"][:8]))
    for kind in (None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx"):
        headers = {"X-API-Key": key, **({"content-type": kind} if kind else {})}
        r = http.post("/v1/predict", content=valid, headers=headers)
        assert r.status_code == 422 and "Content-Type: application/json" in r.json()["detail"][0], kind
    r = http.post("/v1/predict", content=valid, headers={"X-API-Key": key,
                                                          "content-type": "application/vnd.api+json; charset=utf-8"})
    assert r.status_code == 200, r.text


def test_missing_unknown_and_revoked_keys_are_refused(http, service, parts):
    key = add_user(service, "gone")
    assert http.post("/v1/challenge", json={}).status_code == 401
    assert http.post("/v1/challenge", json={}, headers={"X-API-Key": "pk_nope"}).json()["error"] == "unknown_api_key"
    solution, _ = paid(http, key, parts["images"][:8])
    service.store.revoke("gone")
    r = post(http, key, body(solution, parts["images"][:8]))
    assert r.status_code == 403 and r.json()["error"] == "revoked_api_key"
    assert http.get("/v1/account", headers={"X-API-Key": key}).status_code == 403


def test_a_key_is_remembered_briefly_for_its_batches_and_their_commit_reads_it_again(http, service, parts):
    """predict takes a key that authenticated within key_cache_s from memory (no store read before its
    body); a key revoked within that window reaches the commit, which refuses it and charges nothing;
    once the window has passed, or the clock went back, the store is read again before the body."""
    key, other = add_user(service, "brief"), add_user(service, "steady")
    reads = []
    real = service.store.user_by_key
    service.store.user_by_key = lambda hashed: reads.append(hashed) or real(hashed)
    x = parts["images"][:8]
    solution, _ = paid(http, other, x)
    assert len(reads) == 1 and post(http, other, body(solution, x)).status_code == 200 and len(reads) == 1
    answered, _ = paid(http, key, x)
    assert post(http, key, body(answered, x)).status_code == 200
    solution, _ = paid(http, key, x)
    service.store.revoke("brief")
    r = post(http, key, body(solution, x))
    assert r.status_code == 403 and r.json()["error"] == "revoked_api_key" and len(reads) == 3  # in the commit
    r = post(http, key, body(answered, x))  # a resend of an answered batch is not redelivered to it either
    assert r.status_code == 403 and r.json()["error"] == "revoked_api_key" and len(reads) == 3
    assert service.store.account("brief").queries == 8  # the batch answered before the revoke alone
    service.clock.now += service.config.key_cache_s * 1.01
    r = post(http, key, body(solution, x))
    assert r.status_code == 403 and r.json()["error"] == "revoked_api_key" and len(reads) == 4  # before the body
    assert service.remembered(other) is None  # stale
    service.authenticate(other)
    service.clock.now -= 5.0
    assert service.remembered(other) is None  # read in the future: the clock was set back
    service.clock.now += 5.0
    assert service.remembered(other).name == "steady" and service.remembered("pk_" + "x" * 300) is None


def test_the_key_cache_is_bounded_and_can_be_turned_off(parts, tmp_path, monkeypatch):
    from server import service as service_module
    monkeypatch.setattr(service_module, "KEY_CACHE_SIZE", 4)
    svc = make_service(parts, state_url("sqlite", tmp_path))
    try:
        keys = [add_user(svc, f"u{i}") for i in range(7)]
        for key in keys:
            svc.authenticate(key)
        assert len(svc._keys) <= 4 and svc.remembered(keys[-1]).name == "u6" and svc.remembered(keys[0]) is None
        off = make_service(parts, state_url("sqlite", tmp_path), key_cache_s=0.0)
        off.authenticate(keys[-1])
        assert off.remembered(keys[-1]) is None and not off._keys
        off.store.close()
    finally:
        svc.store.close()
    for bad in (float("nan"), float("inf"), -1.0, 61.0):
        with pytest.raises(ConfigError, match="key_cache_s"):
            ServiceConfig(key_cache_s=bad)


def test_a_key_revoked_while_its_batch_is_answered_is_refused_in_the_commit(http, service, parts):
    """The user is read again inside the commit's transaction: a batch authenticated before its key was
    revoked is neither answered nor charged, and its challenge stays unspent."""
    key = add_user(service, "late")
    user = service.authenticate(key)
    solution, _ = paid(http, key, parts["images"][:8])
    service.store.revoke("late")
    with pytest.raises(ApiError) as caught:
        service.predict(user, solution, tensors.encode(parts["images"][:8]))
    assert caught.value.status == 403 and caught.value.code == "revoked_api_key"
    token = puzzles.token_of(puzzles.split_solution(solution)[0])
    assert service.store.account("late").queries == 0 and service.store.spent(token) is None
    assert service.store.sealed(token) is None and service.store.pending_count("late") == 0


def test_a_key_over_its_rate_gets_429(parts, tmp_path):
    clock = Clock()  # the limiter runs on the service's clock: frozen here, so no request's timing matters
    svc = make_service(parts, state_url("sqlite", tmp_path), rate_limit=(1.0, 3), clock=clock)
    try:
        key = add_user(svc, "fast")
        with TestClient(create_app(svc, max_body_bytes=0)) as http:
            codes = [http.get("/v1/account", headers={"X-API-Key": key}).status_code for _ in range(5)]
            assert codes[:3] == [200] * 3 and codes[3] == 429
            r = http.get("/v1/account", headers={"X-API-Key": key})
            assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 and r.json()["retry_after"] > 0
            clock.now += 1.0  # one second at 1 request/s: one token, one request
            codes = [http.get("/v1/account", headers={"X-API-Key": key}).status_code for _ in range(2)]
            assert codes == [200, 429]
    finally:
        svc.store.close()


def test_checks_run_in_order_spent_before_solution(http, service, parts):
    key = add_user(service, "order")
    x = parts["images"][:8]
    solution, _ = paid(http, key, x)
    assert post(http, key, body(solution, x)).status_code == 200
    text = solution.rsplit("|", 1)[0]
    r = post(http, key, body(text + "|ffff", x[:4]))  # spent, and a wrong solution: spent is said first
    assert r.status_code == 409 and r.json()["error"] == "replayed"


def test_a_hoarded_cheap_challenge_pays_the_price_current_at_its_commit(http, service, parts):
    key = add_user(service, "hoarder")
    rng = np.random.default_rng(1)
    x = parts["images"][:64]
    buy(http, key, x)
    hoard = [paid(http, key, x) for _ in range(2)]  # cheap: fetched while the account looked legitimate
    for _ in range(6):  # out-of-distribution batches raise the account's price
        noise = rng.integers(0, 256, size=(64, *ITEM), dtype=np.uint8)
        assert buy(http, key, noise)[0].status_code == 200
    before = service.store.account("hoarder")
    x = rng.integers(0, 256, size=(64, *ITEM), dtype=np.uint8)  # the hoarded challenge pays for a costly batch
    r = post(http, key, body(hoard[0][0], x))
    assert r.status_code == 402 and r.json()["error"] == "payment_required", r.text
    owed = r.json()["owed"]
    assert owed > 10 * hoard[0][1]["work"]
    again = post(http, key, body(hoard[0][0], x))  # a resend: the same sealed batch, the same debt
    assert again.status_code == 402 and again.json()["owed"] == pytest.approx(owed)
    done = http.post("/v1/topup", json={"solution": hoard[0][0], "topup": solve(r.json()["topup"]["challenge"])},
                     headers={"X-API-Key": key})
    assert done.status_code == 200, done.text
    after = service.store.account("hoarder")
    paid_now = hoard[0][1]["work"] + r.json()["topup"]["work"]
    from server.service import SLACK
    # paid in full, at the price current at its commit (less at most SLACK of it, owed to the next challenge)
    assert (after.priced - before.priced) * (1 - SLACK) <= paid_now + before.credit + 1e-6
    assert after.credit >= -SLACK * (after.priced - before.priced) - 1e-6
    assert after.priced - before.priced >= owed


# -- races, on both stores ---------------------------------------------------------------------------------

def test_sixteen_threads_race_one_challenge_and_exactly_one_wins(parts, tmp_path, kind):
    svc = make_service(parts, state_url(kind, tmp_path))
    try:
        key = add_user(svc, "racer")
        user = svc.authenticate(key)
        solution = solve(svc.challenge(user, 8)["challenge"])
        results = race(16, lambda i: svc.predict(user, solution, tensors.encode(parts["images"][8 * i:8 * i + 8])))
        winners = [r for r in results if r in (200, 402)]  # 402: answered, sealed until its top-up is paid
        assert len(winners) == 1 and sorted(results).count(409) == 15, results
        charged = svc.store.account("racer").queries
        assert (charged, svc.store.spent_count()) == ((8, 1) if winners == [200] else (0, 0))
    finally:
        svc.store.close()


def test_concurrent_batches_of_one_account_all_add_up(parts, tmp_path, kind):
    svc = make_service(parts, state_url(kind, tmp_path))
    try:
        keys = [add_user(svc, f"org{i}", group="org") for i in range(4)]  # one organisation: one account
        users = [svc.authenticate(k) for k in keys]

        def go(i):
            for j in range(3):
                x = parts["images"][(12 * i + 4 * j) % 190:(12 * i + 4 * j) % 190 + 4]
                pay_direct(svc, users[i], x)

        threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        row = svc.store.account("org")
        assert row.queries == 48 and row.batches == 12 and svc.store.spent_count() == 12
    finally:
        svc.store.close()


def pay_direct(svc, user, x):
    """Answers for x through the service itself, solving the challenge and every top-up."""
    solution = solve(svc.challenge(user, len(x))["challenge"])
    try:
        return svc.predict(user, solution, tensors.encode(x))
    except ApiError as exc:
        if exc.status != 402:
            raise
        due = exc.extra["topup"]
    while True:
        try:
            return svc.topup(user, solution, solve(due["challenge"]))
        except ApiError as exc:
            if exc.status != 402:
                raise
            due = exc.extra["topup"]


# -- the codec and verifier, property-based ------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 255), min_size=784, max_size=784), st.integers(-1, 783))
def test_eight_bit_floats_travel_as_uint8_and_decode_to_the_same_floats(pixels, nudged):
    x = np.asarray(pixels, dtype=np.float32).reshape(1, 1, 28, 28) / np.float32(255)
    if nudged >= 0:  # one pixel off the 1/255 grid: the batch must travel as float32, unchanged
        x.reshape(-1)[nudged] = np.nextafter(x.reshape(-1)[nudged], np.float32(0.5))
    payload = tensors.encode(x)
    assert payload["dtype"] == ("float32" if nudged >= 0 else "uint8")
    decoded = torch.from_numpy(tensors.decode(payload, item_shape=(1, 28, 28), max_batch=1).copy())
    assert torch.equal(to_float(decoded), torch.from_numpy(x))



@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_no_text_makes_the_codec_or_verifier_raise(text):
    parsed = puzzles.parse(text)
    if not isinstance(parsed, str):
        parsed.signed_by(KEY)
        parsed.unsolved("0")
    assert not puzzles.verify(text, key=KEY, kind="sha256", resource="u", min_work=1)
    puzzles.split_solution(text)


_ISSUED = puzzles.issue_bound(key=KEY, user="alice", work=2.0, kind="sha256", subs=2, batch=8,
                              ttl_s=10 ** 7)  # made at collection: it must outlive the whole run
_SOLVED = SOLVER.solve_target(_ISSUED)[0]


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(_SOLVED) - 1), st.characters(codec="ascii"))
def test_no_mutated_solution_verifies(position, char):
    assert puzzles.verify(_SOLVED, key=KEY, kind="sha256", resource="alice", min_work=1)
    mutated = _SOLVED[:position] + char + _SOLVED[position + 1:]
    if mutated == _SOLVED:
        return
    verdict = puzzles.verify(mutated, key=KEY, kind="sha256", resource="alice", min_work=1)
    if position >= len(_ISSUED) + 1:  # a nonce changed: another nonce may solve the cheap puzzle too
        return
    assert not verdict, mutated


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=200), st.dictionaries(st.text(max_size=10), st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=20), lambda c: st.lists(c, max_size=3), max_leaves=5),
    max_size=4).map(lambda d: __import__("json").dumps(d).encode())))
def test_no_body_makes_the_server_answer_5xx(http, service, raw):
    key = service.store.user_by_key(hash_api_key("pk_fuzz")) and "pk_fuzz"
    if not key:
        service.store.add_user("fuzz", hash_api_key("pk_fuzz"), "fuzz")
    for path in ("/v1/predict", "/v1/challenge"):
        r = http.post(path, content=raw, headers={"X-API-Key": "pk_fuzz", "content-type": "application/json"})
        assert 200 <= r.status_code < 500, (raw, r.status_code, r.text)


def test_base64_of_the_wrong_length_is_refused_before_decoding():
    x = np.zeros((2, *ITEM), dtype=np.uint8)
    payload = tensors.encode(x)
    payload["data"] = base64.b64encode(b"\0" * 10).decode()
    with pytest.raises(tensors.TensorError):
        tensors.decode(payload, item_shape=ITEM, max_batch=4)


# -- regressions found by probing -------------------------------------------------------------------------

def test_splitting_into_small_batches_does_not_lower_the_price_per_query(service):
    user = service.authenticate(add_user(service, "splitter"))
    per_query = {b: service.challenge(user, b)["work"] / b for b in (1, 2, 3, 64)}
    assert per_query[1] == pytest.approx(per_query[64], rel=1e-9) and per_query[1] > 1, per_query


def test_a_locked_or_foreign_database_is_a_json_503_or_a_clear_error(parts, tmp_path, monkeypatch):
    import sqlite3

    import server.store as store_module
    from common.errors import UserError

    monkeypatch.setattr(store_module, "LOCK_TIMEOUT_S", 1)
    svc = make_service(parts, state_url("sqlite", tmp_path))
    key = add_user(svc, "locked")
    blocker = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    try:
        with TestClient(create_app(svc, max_body_bytes=200_000), raise_server_exceptions=False) as http:
            solution, _ = paid(http, key, parts["images"][:8])
            blocker.execute("BEGIN EXCLUSIVE")
            r = post(http, key, body(solution, parts["images"][:8]))
            assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text
            blocker.execute("ROLLBACK")
            assert post(http, key, body(solution, parts["images"][:8])).status_code == 200  # nothing was spent
    finally:
        blocker.close()
        svc.store.close()
    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).execute("CREATE TABLE users (x)").connection.commit()
    with pytest.raises(UserError, match="not usable as this server's state database"):
        open_store(f"sqlite:///{foreign}")


def test_a_bug_behind_predict_is_a_json_500_with_its_traceback_logged(http, service, parts, monkeypatch, caplog):
    key = add_user(service, "bug")
    solution, _ = paid(http, key, parts["images"][:8])

    def broken(*args):
        raise RuntimeError("a bug")
    monkeypatch.setattr(service, "predict", broken)
    with caplog.at_level("ERROR", logger="server.app"):
        r = post(http, key, body(solution, parts["images"][:8]))
    assert r.status_code == 500 and r.json() == {"error": "internal",
                                                 "detail": "an internal error; the operator's log has it"}
    assert any(rec.exc_info and "a bug" in str(rec.exc_info[1]) for rec in caplog.records)


def test_unknown_keys_leave_no_rate_limit_state(http, service):
    for i in range(50):
        assert http.get("/v1/account", headers={"X-API-Key": f"pk_junk{i}"}).status_code == 401
    assert len(service.limiter._buckets) == 0


def test_a_user_name_cannot_silently_join_a_group(service):
    from common.errors import UserError

    add_user(service, "bob", group="org")
    with pytest.raises(UserError, match="account of a group"):
        add_user(service, "org")
    add_user(service, "carol", group="org")  # joining on purpose is allowed
    assert {u.account for u in service.store.users()} == {"org"}


def test_the_batch_must_be_a_plain_whole_number(http, service):
    key = add_user(service, "strict")
    for batch in (True, "5", 1.0, 0, -1, 65):
        r = http.post("/v1/challenge", json={"batch": batch}, headers={"X-API-Key": key})
        assert r.status_code == 422, (batch, r.text)


REPLIES = {
    "html": (200, b"<html>hi</html>"),
    "json-list": (200, b"[1, 2]"),
    "string-500": (500, b'"boom"'),
    "no-challenge-field": (200, b'{"work": 1}'),
    "no-answers": (200, b'{"output": "labels"}'),
    "too-few-answers": (200, b'{"output": "labels", "answers": [1]}'),
    "unknown-output": (200, b'{"output": "bits", "answers": [1, 2]}'),
    "nan-probs": (200, b'{"output": "probs", "answers": [[NaN], [1.0]]}'),
}


@pytest.mark.parametrize("case", sorted(REPLIES))
def test_the_client_refuses_what_is_not_this_apis_reply(case):
    import httpx

    from common.errors import UserError
    from server.client import ApiClient

    status, raw = REPLIES[case]
    challenge = puzzles.issue_bound(key=KEY, user="u", work=1.0, kind="sha256", subs=1, batch=2)

    def handler(request):
        path = request.url.path
        if path == "/v1/account" and case not in ("html", "json-list", "string-500"):
            return httpx.Response(200, json={"queries": 0, "costs": {}, "next": {"batch": 2}})
        if path == "/v1/challenge" and case not in ("no-challenge-field",):
            return httpx.Response(200, json={"challenge": challenge, "work": 1.0})
        return httpx.Response(status, content=raw)

    with ApiClient("http://test", "pk_x", workers=1, transport=httpx.MockTransport(handler), retries=2) as client:
        with pytest.raises(UserError, match="not this API's|refused"):
            client.predict(np.zeros((2, *ITEM), dtype=np.uint8))


def test_the_client_waits_out_a_429_on_its_challenge_too(monkeypatch):
    import httpx

    from server import client as client_module
    from server.client import ApiClient

    challenge = puzzles.issue_bound(key=KEY, user="u", work=1.0, kind="sha256", subs=1, batch=2)
    asked, waits = [], []
    monkeypatch.setattr(client_module.time, "sleep", waits.append)  # no real waiting

    def handler(request):
        path = request.url.path
        if path == "/v1/account":
            return httpx.Response(200, json={"queries": 0, "costs": {}, "next": {"batch": 2}})
        if path == "/v1/challenge":
            asked.append(path)
            if len(asked) < 3:
                return httpx.Response(429, json={"error": "rate_limited", "detail": "slow down", "retry_after": 0.0})
            return httpx.Response(200, json={"challenge": challenge, "work": 1.0})
        return httpx.Response(200, json={"output": "labels", "queries": 2, "answers": [3, 4]})

    with ApiClient("http://test", "pk_x", workers=1, transport=httpx.MockTransport(handler), retries=5) as client:
        assert client.predict(np.zeros((2, *ITEM), dtype=np.uint8)).tolist() == [3, 4]
    assert len(asked) == 3 and waits == [0.2, 0.2]


def test_serve_on_a_port_in_use_fails_before_making_any_file(victim_path, tmp_path, monkeypatch, capsys):
    import socket

    import main as entry
    from tests.server_helpers import BASELINE

    (tmp_path / "b.csv").write_text(BASELINE)
    (tmp_path / "k").write_text("ab" * 32)
    (tmp_path / "k").chmod(0o600)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        code = entry.main(["serve", "--calibration", str(tmp_path / "b.csv"), "--key_file", str(tmp_path / "k"),
                           "--state", f"sqlite:///{tmp_path / 's.db'}", "--port", str(taken.getsockname()[1]),
                           "--victim_path", str(victim_path)])
    assert code == 2 and "choose another --port" in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists()
