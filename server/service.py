"""The prediction service behind the HTTP layer: challenges, sealed answers, top-ups, accounts.

Protocol v2. A batch is priced after the server has seen it, by its own queries' costs:
  1. POST /v1/challenge {batch}: a pow2 challenge for the batch's expected price (an account's own mean
     price per query so far, a newcomer's a legitimate query's, less the account's credit, plus a margin);
  2. POST /v1/predict {solution, inputs}: the server answers the batch and prices it (SplitProofPricer:
     each query's own cost, times the account's cumulative factor, the batch included), then, in one
     transaction with the account row locked, either the work paid (the challenge's plus the account's
     credit) covers at least 1 - SLACK of the price, and the answer is returned (200; what is left owing
     is a debt the account's next challenge adds), or the answer is sealed in the store and a 402
     carries a pow3 top-up challenge for the difference, bound to this batch;
  3. POST /v1/topup {solution, topup}: the same check with the top-up's work added; 200 with the answer,
     or another 402 if the price rose meanwhile (other batches of the account committed first).
A legitimate batch mostly takes one round trip (step 2); an overpayment becomes credit for the next.
A resent request gets the same reply (a committed answer is redelivered, a sealed batch the same 402);
nothing is charged twice; a sealed batch survives a crash of the server (it is in the store).

Each predict request is checked in this order, and the first failure answers (never a 5xx):
  1. the solution parses as a pow2 challenge plus nonces (400);
  2. the signature is this server's (403);
  3. the challenge was issued to this API key's user (403);
  4. it has not expired (410; the client asks for a new one);
  5. it is not spent (409), unless this is the same request again (its stored answer is redelivered, or
     its sealed batch's 402);
  6. the nonces solve it (403);
  7. the inputs: dtype, shape for the dataset, a batch no larger than the challenge's, finite (413/422).
"""
from __future__ import annotations

import collections
import copy
import hashlib
import ipaddress
import math
import statistics
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from common.checks import finite
from pow import kinds, puzzles
from server import tensors
from server.keys import hash_api_key
from server.store import AccountRow, Owed, Revoked, Spent, TooManyPending

MARGIN = 0.25  # after its first batch, a challenge asks this share more than the expected price (kept as credit)
FRESH = 0.5  # the least share of its expected price that a challenge asks, whatever the account's credit
SLACK = 0.5  # a batch may leave its account owing up to this share of its price; the next challenge adds it
RECENT = 64  # answered batches of each size whose answering time prices a newcomer's first challenge

def _request_digest(solution: str, inputs: dict) -> str:
    """What tells a resend from another batch under the same challenge: the solution and the inputs."""
    digest = hashlib.sha256(repr((solution, inputs.get("dtype"), inputs.get("shape"))).encode())
    data = inputs.get("data")
    digest.update(data.encode() if isinstance(data, str) else repr(data).encode())
    return digest.hexdigest()


def _revoked() -> "ApiError":
    return ApiError(403, "revoked_api_key", "this API key was revoked; ask the operator for a new one")


class ApiError(Exception):
    """A rejected request: HTTP status, a short code and a message saying what to do."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: float | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after
        self.extra = extra or {}

    def body(self) -> dict:
        body = {"error": self.code, "detail": self.message, **self.extra}
        return body if self.retry_after is None else {**body, "retry_after": round(self.retry_after, 3)}


@dataclass(frozen=True)
class ServiceConfig:
    """The service's own limits (the flags of the same names: --max_batch, --ttl_s, --rate, --burst,
    --anonymous take their defaults from here)."""
    puzzle: str = kinds.DEFAULT
    subs: int = kinds.DEFAULT_SUBS
    max_batch: int = 256
    ttl_s: float = 600.0
    cost_column: str = "entropy_cost"
    rate: float = 50.0  # requests per second per API key (or address range, anonymous), sustained
    burst: int = 100  # requests per API key at once
    anonymous: bool = False  # no API keys: each address range pays by its queries' own costs alone
    key_cache_s: float = 1.0  # a key read from the store authenticates predict and topup from memory this long

    def __post_init__(self):
        finite("key_cache_s", self.key_cache_s, lo=0.0, hi=60.0)


KEY_CACHE_SIZE = 10_000  # keys held in the authentication cache at most (the oldest go first)


@dataclass(frozen=True)
class Client:
    """Who a request is from: a user with an API key, or an anonymous address range."""
    name: str
    account: str
    revoked: bool = False


class RateLimiter:
    """A token bucket per key: `rate` requests per second, `burst` at once. In memory, per replica.
    At most `max_keys` buckets are kept (anonymous ranges are unbounded): the fullest are dropped."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic, max_keys: int = 100_000):
        self.rate, self.burst, self.clock, self.max_keys = float(rate), int(burst), clock, max_keys
        self._lock = threading.Lock()
        self._buckets: dict = {}

    def wait_s(self, key: str) -> float:
        """0 when a request may go now (and takes a token), else the seconds until one may."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate)  # a clock set back adds none
            if len(self._buckets) >= self.max_keys and key not in self._buckets:
                self._buckets = {k: v for k, v in self._buckets.items()
                                 if min(float(self.burst), v[0] + (now - v[1]) * self.rate) < self.burst}
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


def address_range(host: str | None) -> str:
    """The account of an anonymous client: its IPv4 /24 or IPv6 /48, spelled as a user name."""
    try:
        ip = ipaddress.ip_address(host or "")
    except ValueError:
        return "anon-unknown"
    net = ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 48}", strict=False)
    return "anon-" + str(net.network_address).replace(":", "-") + f"-{net.prefixlen}"


class PredictionService:
    """Everything the API does, without HTTP: a shared Victim, one fresh ledger per batch, the
    split-proof pricer and puzzle pricer, the store, and the HMAC key. `check_solution(challenge,
    nonces) -> reason or None` checks the proof-of-work (a simulation injects one that trusts it)."""

    def __init__(self, *, victim, item_shape: tuple, make_ledger, pricer, puzzle_pricer, store, key: bytes,
                 config: ServiceConfig, clock=time.time, check_solution=None):
        if config.puzzle not in puzzles.KINDS:
            raise ValueError(f"the server issues {' or '.join(puzzles.KINDS)} puzzles, not {config.puzzle}")
        self.victim, self.item_shape, self.make_ledger = victim, tuple(item_shape), make_ledger
        self.pricer, self.puzzle_pricer, self.store, self.key = pricer, puzzle_pricer, store, key
        self.config, self.clock = config, clock
        self.per_query_column = per_query_column(config.cost_column)
        self.check_solution = check_solution or (lambda ch, nonces: ch.unsolved(nonces))
        self.limiter = RateLimiter(config.rate, config.burst, clock=clock)  # one clock, injectable in tests
        #: seconds of each answered batch's parts (inference, accountant, commit); the latest 10,000
        self.timings: collections.deque = collections.deque(maxlen=10_000)
        self._recent: dict = collections.defaultdict(lambda: collections.deque(maxlen=RECENT))  # by batch size
        self._typical: dict = {}  # by batch size: the median of its _recent, kept as each batch is answered
        self._recent_lock = threading.Lock()
        self._keys: dict = {}  # hash of an API key -> (Client, when it was read from the store)
        self._keys_lock = threading.Lock()

    def on_store(self, store) -> "PredictionService":
        """This service over another store: the same victim, pricers, key, clock, rate limiter and recent
        answering times (a replay prices each split on a fresh store this way, without changing this one)."""
        twin = copy.copy(self)
        twin.store = store
        twin._keys, twin._keys_lock = {}, threading.Lock()  # its users are that store's
        return twin

    # -- identity ----------------------------------------------------------------------------------
    def authenticate(self, api_key, address: str | None = None) -> Client:
        """The client of a request: by its API key, or (anonymous serving) by its address range."""
        if self.config.anonymous:
            name = address_range(address)
            self._limit(name)
            return Client(name, name)
        if not api_key:
            raise ApiError(401, "missing_api_key", "send your API key in the X-API-Key header")
        if not isinstance(api_key, str) or len(api_key) > 256:
            raise ApiError(401, "unknown_api_key", "this API key is not known here; ask the operator for one")
        hashed = hash_api_key(api_key)
        user = self.store.user_by_key(hashed)
        if user is None:
            raise ApiError(401, "unknown_api_key", "this API key is not known here; ask the operator for one")
        self._limit(user.name)  # known users only: the buckets are bounded by the users
        if user.revoked:
            raise _revoked()
        if self.config.key_cache_s > 0:
            with self._keys_lock:
                if len(self._keys) >= KEY_CACHE_SIZE:
                    for old in list(self._keys)[:KEY_CACHE_SIZE // 2]:  # in insertion order: the oldest reads
                        del self._keys[old]
                self._keys.pop(hashed, None)
                self._keys[hashed] = (user, self.clock())
        return user

    def remembered(self, api_key, address: str | None = None) -> Client | None:
        """The client of a predict or topup request without reading the store, or None when the store
        must be read (authenticate): anonymous clients always, a user whose key authenticated within
        key_cache_s. The commit of each batch reads its user again (a key revoked meanwhile spends
        nothing), so only this short window lets a revoked key's batch reach the commit. The rate
        limit applies as in authenticate."""
        if self.config.anonymous:
            return self.authenticate(api_key, address)
        if not api_key or not isinstance(api_key, str) or len(api_key) > 256:
            return None
        with self._keys_lock:
            entry = self._keys.get(hash_api_key(api_key))
        if entry is None or not 0.0 <= self.clock() - entry[1] <= self.config.key_cache_s:
            return None  # unknown, stale, or read in the future (the clock was set back)
        self._limit(entry[0].name)
        return entry[0]

    def _limit(self, name: str) -> None:
        wait = self.limiter.wait_s(name)
        if wait > 0:
            raise ApiError(429, "rate_limited", f"too many requests from this client; retry in {wait:.2f} s",
                           retry_after=wait)

    # -- pricing -------------------------------------------------------------------------------------
    def _totals(self, ledger_state) -> dict:
        ledger = self.make_ledger()
        if ledger_state is not None:
            ledger.load_state_dict(ledger_state)
        return ledger.totals()

    def _cost(self, totals: dict) -> float:
        cost = float(totals.get(self.config.cost_column, 0.0))
        if not math.isfinite(cost):
            raise ValueError(f"an account's cost is {cost}; refusing to price it")
        return cost

    def typical_answer_s(self, batch: int) -> float | None:
        """This server's answering time for a batch of this size: the median of its latest RECENT such
        batches (None before the first: the baseline's time). Quotes and prices both use it, so a batch's
        price moves with its queries' weights, not with the jitter of one measurement."""
        with self._recent_lock:
            return self._typical.get(batch)

    def _answered_in(self, batch: int, seconds: float) -> None:
        with self._recent_lock:
            recent = self._recent[batch]
            recent.append(seconds)
            self._typical[batch] = float(statistics.median(recent))

    def _work(self, seconds: float) -> float:
        return min(max(0.0, seconds) * self.puzzle_pricer.rate, puzzles.MAX_WORK)

    def quote(self, row: AccountRow, batch: int, totals: dict | None = None) -> dict:
        """The expected price of the account's next `batch` queries, before the server has seen them:
        its own mean weight per query so far (a newcomer: a legitimate query's, 1), at its factor now."""
        totals = self._totals(row.ledger) if totals is None else totals
        cost = self._cost(totals)
        answer_s = self.typical_answer_s(batch)
        weight = row.weight / row.queries if row.queries else 1.0
        seconds = self.pricer.expected_seconds(batch, queries=row.queries, cost=cost, answer_s=answer_s,
                                               weight=weight)
        return {"seconds": float(seconds), "work": self._work(seconds), "cost": cost}

    def challenge(self, user, batch: int | None) -> dict:
        batch = self.config.max_batch if batch is None else batch
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= self.config.max_batch:
            raise ApiError(422, "bad_batch", f"batch must be a whole number from 1 to {self.config.max_batch}")
        row = self.store.account(user.account)
        quote = self.quote(row, batch)
        margin = MARGIN if row.queries else 0.0  # a newcomer pays its first batch's expected price exactly
        # credit lowers a challenge, but never below FRESH of the expected price: challenges can be fetched
        # many times, and each batch the server computes must have cost its client fresh work
        work = min(max(1.0, FRESH * quote["work"], (1.0 + margin) * quote["work"] - row.credit), puzzles.MAX_WORK)
        return self._issue(user, work, batch)

    def _issue(self, user, work: float, batch: int, bind: str | None = None) -> dict:
        text = puzzles.issue_bound(key=self.key, user=user.name, work=work, kind=self.config.puzzle,
                                   subs=self.config.subs, batch=batch, ttl_s=self.config.ttl_s, now=self.clock(),
                                   bind=bind)
        ch = puzzles.parse(text)
        return {"challenge": text, "puzzle": ch.kind, "work": ch.work, "subs": ch.subs, "batch": batch,
                "issued": ch.issued, "expires": ch.expires,
                "expected_seconds": self.puzzle_pricer.expected_seconds(ch.work)}

    # -- predict -------------------------------------------------------------------------------------
    def _challenge_of(self, user, solution, versions: tuple) -> tuple:
        """(challenge, nonces text) of a solution that is this server's, for this user, and unexpired."""
        split = puzzles.split_solution(solution)
        if isinstance(split, str):
            raise ApiError(400, "malformed_solution", split)
        text, nonces = split
        ch = puzzles.parse(text)
        if isinstance(ch, str):
            raise ApiError(400, "malformed_challenge", ch)
        if ch.version not in versions:
            raise ApiError(400, "malformed_challenge", "not a challenge of this kind: POST /v1/challenge first")
        if not ch.signed_by(self.key):
            raise ApiError(403, "bad_signature", "the challenge was not issued by this server or was altered")
        if ch.resource != user.name:
            raise ApiError(403, "not_your_challenge", "the challenge was issued to another user")
        return ch, nonces

    def _solved(self, ch, nonces) -> None:
        if ch.kind != self.config.puzzle:
            raise ApiError(403, "wrong_puzzle", f"this server now issues {self.config.puzzle} puzzles; ask for a "
                                                f"new challenge")
        reason = self.check_solution(ch, nonces)
        if reason is not None:
            raise ApiError(403, "invalid_solution", reason)

    def predict(self, user, solution, inputs: dict) -> dict:
        entered = time.perf_counter()
        ch, nonces = self._challenge_of(user, solution, (puzzles.VERSION2,))
        token = puzzles.token_of(ch.text)
        request = _request_digest(solution, inputs)
        prior = self.store.spent(token)
        if prior is not None:
            return self._redeliver(user, prior, request)
        held = self.store.sealed(token)
        if held is not None:  # the same batch again: its 402 again (or its answer, if credit now covers it)
            if held.request != request:
                raise ApiError(409, "replayed", "this challenge was already spent; POST /v1/challenge for a new one")
            return self._settle(user, held.token, held.expires, held.queries, held.request, held.response,
                                held.sealed, paid=0.0)
        if self.clock() > ch.expires:
            raise ApiError(410, "expired", "the challenge has expired; POST /v1/challenge for a new one")
        self._solved(ch, nonces)
        try:
            x = tensors.decode(inputs, item_shape=self.item_shape, max_batch=ch.batch)
        except tensors.TensorError as exc:
            raise ApiError(exc.status, "bad_inputs", str(exc)) from None
        start = time.perf_counter()
        images = torch.from_numpy(x.copy())
        logp = self.victim.log_probs(images)
        if not torch.isfinite(logp).all():  # never charge (or answer) a batch the accountants cannot price
            raise ApiError(422, "bad_inputs", "the model's output is not finite for these inputs; nothing was "
                                              "charged")
        answer = self.victim.answer(logp)
        inferred = time.perf_counter()
        ledger = self.make_ledger()
        per_query = ledger.add(logp, images=images)
        costs = np.asarray(per_query[self.per_query_column], dtype=np.float64)
        if not np.isfinite(costs).all() or not all(math.isfinite(float(v)) for v in ledger.totals().values()):
            raise ApiError(422, "bad_inputs", "these inputs' costs are not finite numbers; nothing was charged")
        answer_s = time.perf_counter() - start
        typical = self.typical_answer_s(len(x))
        self._answered_in(len(x), answer_s)
        response = {"output": self.victim.output, "queries": len(x), "answers": _answers(answer)}
        sealed = {"delta": ledger.state_dict(), "costs": costs.tolist(), "answer_s": answer_s, "typical_s": typical}
        expires = max(float(ch.expires), self.clock() + self.config.ttl_s)  # time to pay a top-up
        reply = self._settle(user, token, expires, len(x), request, response, sealed, paid=ch.work)
        done = time.perf_counter()
        self.timings.append({"inference_s": inferred - start, "accountant_s": answer_s - (inferred - start),
                             "commit_s": done - start - answer_s, "checks_s": start - entered,
                             "total_s": done - entered})
        return reply

    def topup(self, user, solution, topup) -> dict:
        """Pay a sealed batch's top-up: its answer (200), or a 402 for what its price still lacks."""
        base, _ = self._challenge_of(user, solution, (puzzles.VERSION2,))
        token = puzzles.token_of(base.text)
        ch, nonces = self._challenge_of(user, topup, (puzzles.VERSION3,))
        if ch.bind != token:
            raise ApiError(403, "not_this_batch", "the top-up was issued for another batch")
        prior = self.store.spent(token)
        if prior is not None:
            return self._redeliver(user, prior)
        held = self.store.sealed(token)
        if held is None or self.clock() > held.expires:
            raise ApiError(410, "expired", "no sealed batch for this challenge (it expired or was never sent); "
                                           "send the batch again with a new challenge")
        if self.clock() > ch.expires:
            raise ApiError(410, "expired", "the top-up has expired; resend the batch to POST /v1/predict for a "
                                           "new one")
        self._solved(ch, nonces)
        return self._settle(user, token, held.expires, held.queries, held.request, held.response, held.sealed,
                            paid=ch.work, paid_token=puzzles.token_of(ch.text), paid_expires=ch.expires)

    def _settle(self, user, token, expires, queries, request, response, sealed, *, paid, **topup) -> dict:
        costs = np.asarray(sealed["costs"], dtype=np.float64)
        answer_s = float(sealed["answer_s"])
        typical = sealed.get("typical_s")

        merged: dict = {}  # the account's ledger with this batch added, made once per stored ledger

        def merge(stored):
            key = repr(stored)
            if key not in merged:
                total = self.make_ledger()
                if stored is not None:
                    total.load_state_dict(stored)
                total.absorb(sealed["delta"])
                merged[key] = (total.state_dict(), total.totals())
            return merged[key][0]

        def price(row: AccountRow) -> tuple:
            merge(row.ledger)
            cost = self._cost(merged[repr(row.ledger)][1])
            seconds, weight = self.pricer.price(costs, queries=row.queries + queries, cost=cost, answer_s=typical)
            return self._work(seconds), weight

        try:
            result = self.store.settle(token=token, expires=expires, account=user.account, queries=queries,
                                       user=None if self.config.anonymous else user.name,
                                       answer_s=answer_s, merge=merge, price=price, paid=paid, request=request,
                                       response=response, sealed=sealed, slack=SLACK, **topup)
        except Revoked:
            raise _revoked() from None
        except TooManyPending:
            raise ApiError(429, "too_many_sealed", "this account holds too many sealed batches; pay their top-ups "
                                                   "or let them expire", retry_after=self.config.ttl_s) from None
        if isinstance(result, Spent):  # another request spent it first
            return self._redeliver(user, result, request)
        if isinstance(result, Owed):
            due = self._issue(user, min(max(1.0, result.owed), puzzles.MAX_WORK), queries, bind=token)
            raise ApiError(402, "payment_required", f"this batch's price is {result.owed:.6g} work above what was "
                                                    f"paid; solve the top-up and POST it to /v1/topup",
                           extra={"topup": due, "paid": result.paid, "owed": result.owed})
        return {**response, "account": self._summary(user, result)}

    def _redeliver(self, user, prior: Spent, request: str | None = None) -> dict:
        """A spent batch's stored answer, to the same request again (a top-up's: to any), never to a
        revoked key: the client may come from memory (remembered), so the store is read here."""
        if not self.config.anonymous and not self.store.active(user.name):
            raise _revoked()
        if request is not None and prior.request != request:
            raise ApiError(409, "replayed", "this challenge was already spent; POST /v1/challenge for a new one")
        return {**prior.response, "redelivered": True}

    # -- account -------------------------------------------------------------------------------------
    def _summary(self, user, row: AccountRow) -> dict:
        totals = self._totals(row.ledger)
        quote = self.quote(row, self.config.max_batch, totals)
        costs = {k: float(v) for k, v in totals.items()}
        return {"user": user.name, "account": row.account, "queries": row.queries, "batches": row.batches,
                "answer_s": row.answer_s, "costs": costs, "credit": row.credit, "priced": row.priced,
                "next": {"batch": self.config.max_batch, "work": quote["work"], "seconds": quote["seconds"]}}

    def account(self, user) -> dict:
        return self._summary(user, self.store.account(user.account))


def per_query_column(column: str) -> str:
    """The per-query cost behind a cumulative column: a composed epsilon is priced by its queries' own."""
    return {"privacy_eps": "privacy_cost", "pate_eps": "pate_cost"}.get(column, column)


def _answers(answer: torch.Tensor) -> list:
    if answer.dtype == torch.int64:
        return answer.tolist()
    return np.round(answer.numpy().astype(np.float64), 7).tolist()
