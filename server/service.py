"""The prediction service behind the HTTP layer: challenges, checked predictions, accounts.

Each predict request is checked in this order, and the first failure answers (never a 5xx):
  1. the solution parses as a pow2 challenge plus nonces (400);
  2. the signature is this server's (403);
  3. the challenge was issued to this API key's user (403);
  4. it has not expired (410; the client asks for a new one);
  5. it is not spent (409), unless this is the same request again (its stored answer is redelivered);
  6. the nonces solve it (403);
  7. its price is still current: a challenge fetched long before, when the account was cheaper, is
     refused once the price has more than doubled (409; the client asks for a new one);
  8. the inputs: dtype, shape for the dataset, a batch no larger than the challenge's, finite (413/422).
Then the victim answers, the batch's costs go to a fresh ledger, and the store commits the spent
challenge and the account's new totals in one transaction before the answer is returned.
"""
from __future__ import annotations

import collections
import hashlib
import math
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from pow import puzzles
from server import tensors
from server.keys import hash_api_key
from server.store import AccountRow, Spent

STALE_FACTOR = 0.5  # a challenge is refused when its work is below this share of the current price


class ApiError(Exception):
    """A rejected request: HTTP status, a short code and a message saying what to do."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after

    def body(self) -> dict:
        body = {"error": self.code, "detail": self.message}
        return body if self.retry_after is None else {**body, "retry_after": round(self.retry_after, 3)}


@dataclass(frozen=True)
class ServiceConfig:
    puzzle: str = "scrypt"
    subs: int = 1
    max_batch: int = 256
    ttl_s: float = 600.0
    cost_column: str = "entropy_cost"
    rate: float = 50.0  # requests per second per API key (sustained)
    burst: int = 100  # requests per API key at once


class RateLimiter:
    """A token bucket per key: `rate` requests per second, `burst` at once. In memory, per replica."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate, self.burst, self.clock = float(rate), int(burst), clock
        self._lock = threading.Lock()
        self._buckets: dict = {}

    def wait_s(self, key: str) -> float:
        """0 when a request may go now (and takes a token), else the seconds until one may."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


class PredictionService:
    """Everything the API does, without HTTP: a shared Victim, one fresh ledger per batch, the
    calibrator and pricer, the store, and the HMAC key."""

    def __init__(self, *, victim, item_shape: tuple, make_ledger, calibrator, pricer, store, key: bytes,
                 config: ServiceConfig, clock=time.time):
        if config.puzzle not in puzzles.KINDS:
            raise ValueError(f"the server issues {' or '.join(puzzles.KINDS)} puzzles, not {config.puzzle}")
        self.victim, self.item_shape, self.make_ledger = victim, tuple(item_shape), make_ledger
        self.calibrator, self.pricer, self.store, self.key = calibrator, pricer, store, key
        self.config, self.clock = config, clock
        self.limiter = RateLimiter(config.rate, config.burst)
        #: seconds of each answered batch's parts (inference, accountant, commit); the latest 10,000
        self.timings: collections.deque = collections.deque(maxlen=10_000)

    # -- identity ----------------------------------------------------------------------------------
    def authenticate(self, api_key) -> object:
        if not api_key:
            raise ApiError(401, "missing_api_key", "send your API key in the X-API-Key header")
        if not isinstance(api_key, str) or len(api_key) > 256:
            raise ApiError(401, "unknown_api_key", "this API key is not known here; ask the operator for one")
        user = self.store.user_by_key(hash_api_key(api_key))
        if user is None:
            raise ApiError(401, "unknown_api_key", "this API key is not known here; ask the operator for one")
        wait = self.limiter.wait_s(user.name)  # known users only: the buckets are bounded by the users
        if wait > 0:
            raise ApiError(429, "rate_limited", f"too many requests for this API key; retry in {wait:.2f} s",
                           retry_after=wait)
        if user.revoked:
            raise ApiError(403, "revoked_api_key", "this API key was revoked; ask the operator for a new one")
        return user

    # -- pricing -------------------------------------------------------------------------------------
    def _totals(self, ledger_state) -> dict:
        ledger = self.make_ledger()
        if ledger_state is not None:
            ledger.load_state_dict(ledger_state)
        return ledger.totals()

    def price(self, row: AccountRow, batch: int, totals: dict | None = None) -> dict:
        """Seconds and work of the account's next `batch` queries (`totals`: the row's ledger totals, when
        the caller has them already; composing the RDP into an epsilon is the costly part)."""
        totals = self._totals(row.ledger) if totals is None else totals
        cost = float(totals.get(self.config.cost_column, 0.0))
        answer_s = row.answer_s / row.queries * batch if row.queries else None
        seconds = self.calibrator.next_seconds(row.queries, cost, batch=batch, answer_s=answer_s)
        if not (math.isfinite(seconds) and seconds >= 0 and math.isfinite(cost)):
            raise ValueError(f"the calibrator priced a batch at {seconds} s (cost {cost}); refusing to issue it")
        # Work is proportional to seconds (the solver's fixed overhead is not subtracted per challenge), so
        # the price of a query does not fall when a client splits its queries into small batches.
        work = min(max(1.0, seconds * self.pricer.rate), puzzles.MAX_WORK)
        return {"seconds": float(seconds), "work": float(work), "cost": cost}

    def challenge(self, user, batch: int | None) -> dict:
        batch = self.config.max_batch if batch is None else batch
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= self.config.max_batch:
            raise ApiError(422, "bad_batch", f"batch must be a whole number from 1 to {self.config.max_batch}")
        price = self.price(self.store.account(user.account), batch)
        text = puzzles.issue_bound(key=self.key, user=user.name, work=price["work"], kind=self.config.puzzle,
                                   subs=self.config.subs, batch=batch, ttl_s=self.config.ttl_s, now=self.clock())
        ch = puzzles.parse(text)
        return {"challenge": text, "puzzle": ch.kind, "work": ch.work, "subs": ch.subs, "batch": batch,
                "issued": ch.issued, "expires": ch.expires, "expected_seconds": price["seconds"]}

    # -- predict -------------------------------------------------------------------------------------
    def predict(self, user, solution, inputs: dict) -> dict:
        split = puzzles.split_solution(solution)
        if isinstance(split, str):
            raise ApiError(400, "malformed_solution", split)
        text, nonces = split
        ch = puzzles.parse(text)
        if isinstance(ch, str):
            raise ApiError(400, "malformed_challenge", ch)
        if ch.version != puzzles.VERSION2:
            raise ApiError(400, "malformed_challenge", "not a challenge of this server: POST /v1/challenge first")
        if not ch.signed_by(self.key):
            raise ApiError(403, "bad_signature", "the challenge was not issued by this server or was altered")
        if ch.resource != user.name:
            raise ApiError(403, "not_your_challenge", "the challenge was issued to another user")
        if self.clock() > ch.expires:
            raise ApiError(410, "expired", "the challenge has expired; POST /v1/challenge for a new one")
        token = hashlib.sha256(text.encode()).hexdigest()
        request = hashlib.sha256(repr((solution, inputs.get("dtype"), inputs.get("shape"),
                                       inputs.get("data"))).encode()).hexdigest()
        prior = self.store.spent(token)
        if prior is not None:
            return self._redeliver(prior, request)
        if ch.kind != self.config.puzzle:
            raise ApiError(403, "wrong_puzzle", f"this server now issues {self.config.puzzle} puzzles; ask for a "
                                                f"new challenge")
        reason = ch.unsolved(nonces)
        if reason is not None:
            raise ApiError(403, "invalid_solution", reason)
        row = self.store.account(user.account)
        current = self.price(row, ch.batch)["work"]
        if ch.work < STALE_FACTOR * current:
            raise ApiError(409, "stale_price", f"the account's price rose since this challenge was issued "
                                               f"(work {ch.work:.6g}, now {current:.6g}); ask for a new challenge")
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
        ledger.add(logp, images=images)
        if not all(math.isfinite(float(v)) for v in ledger.totals().values()):
            raise ApiError(422, "bad_inputs", "these inputs' costs are not finite numbers; nothing was charged")
        delta = ledger.state_dict()
        answer_s = time.perf_counter() - start
        response = {"output": self.victim.output, "queries": len(x), "answers": _answers(answer)}

        def merge(stored):
            if stored is None:
                return delta
            total = self.make_ledger()
            total.load_state_dict(stored)
            total.absorb(delta)
            return total.state_dict()

        result = self.store.commit(token=token, expires=ch.expires, account=user.account, queries=len(x),
                                   answer_s=answer_s, merge=merge, request=request, response=response)
        self.timings.append({"inference_s": inferred - start, "accountant_s": answer_s - (inferred - start),
                             "commit_s": time.perf_counter() - start - answer_s})
        if isinstance(result, Spent):  # another request spent it first
            return self._redeliver(result, request)
        return {**response, "account": self._summary(user, result)}

    def _redeliver(self, prior: Spent, request: str) -> dict:
        if prior.request != request:
            raise ApiError(409, "replayed", "this challenge was already spent; POST /v1/challenge for a new one")
        return {**prior.response, "redelivered": True}

    # -- account -------------------------------------------------------------------------------------
    def _summary(self, user, row: AccountRow) -> dict:
        totals = self._totals(row.ledger)
        price = self.price(row, self.config.max_batch, totals)
        costs = {k: float(v) for k, v in totals.items()}
        return {"user": user.name, "account": row.account, "queries": row.queries, "batches": row.batches,
                "answer_s": row.answer_s, "costs": costs,
                "next": {"batch": self.config.max_batch, "work": price["work"], "seconds": price["seconds"]}}

    def account(self, user) -> dict:
        return self._summary(user, self.store.account(user.account))


def _answers(answer: torch.Tensor) -> list:
    if answer.dtype == torch.int64:
        return answer.tolist()
    return np.round(answer.numpy().astype(np.float64), 7).tolist()

