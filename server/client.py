"""A client of the prediction API: predict(x) -> answers, paying each batch's proof-of-work.

ApiClient fetches a challenge for each batch, solves it with the multi-core solver, and sends the batch.
When the server answers 402 (the batch cost more than the challenge paid), it solves the top-up and sends
it to /v1/topup, until the answer comes. It asks for a new challenge when one expires, waits when
rate-limited, and after a broken connection sends the same request again: the server redelivers a
committed answer (or a sealed batch's 402), so nothing is lost or paid twice. It records the time spent
solving, the time waiting on the server, and the round trips each batch took.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np

from common.errors import UserError
from models.oracle import Payment
from pow.solver import Solver, default_workers
from server import tensors

API_KEY_ENV = "POW_API_KEY"  # where a client's API key may come from instead of --api_key
RETRIES = 12  # attempts per batch, over expiry, top-ups, rate limits and broken connections
BACKOFF_S = 0.25  # first wait after a broken connection (doubles, at most 5 s)
NEW_CHALLENGE = {"expired", "wrong_puzzle"}


def resolve_api_key(given: str | None, environ=None) -> str:
    """The API key: `given` (--api_key), else $POW_API_KEY; a UserError that says how to get one."""
    key = given or (os.environ if environ is None else environ).get(API_KEY_ENV, "")
    if not key:
        raise UserError(f"no API key: pass --api_key or set ${API_KEY_ENV} (the operator makes one with: "
                        f"python main.py serve-admin add-user NAME)")
    return key


def _wait_out(body) -> None:
    """Sleep for a 429's retry_after (at least 0.2 s, at most 5 s)."""
    after = body.get("retry_after") if isinstance(body, dict) else None
    time.sleep(min(5.0, max(0.2, float(after)) if isinstance(after, (int, float)) else 0.2))


class ApiClient:
    """predict(x: np.ndarray) -> np.ndarray (labels, or probabilities) from a live server. Use as a
    context manager, or call close(): the HTTP connections and the solver's processes are released."""

    def __init__(self, url: str, api_key: str, *, workers: int | None = None, timeout_s: float = 120.0,
                 retries: int = RETRIES, transport=None, max_work: float | None = None, solver=None):
        import httpx

        if not url or not url.startswith(("http://", "https://")):
            raise UserError(f"--server must be an http:// or https:// URL, got '{url}'")
        if not api_key:
            raise UserError("no API key: pass --api_key (the operator makes one with: python main.py "
                            "serve-admin add-user NAME)")
        if not (api_key.isascii() and api_key.isprintable()) or len(api_key) > 256:
            raise UserError("the API key must be printable ASCII text of at most 256 characters, as add-user "
                            "printed it")
        try:
            httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise UserError(f"--server {url} is not a valid URL ({exc})") from exc
        self._httpx = httpx
        self.url, self.retries, self.max_work = url.rstrip("/"), retries, max_work
        self._http = httpx.Client(base_url=self.url, headers={"X-API-Key": api_key}, timeout=timeout_s,
                                  transport=transport)
        self._own_solver = solver is None  # a solver passed in is shared, and its owner closes it
        self._solver = Solver(workers or default_workers()).__enter__() if solver is None else solver
        self._solve_lock = threading.Lock()  # one solve at a time: each already uses every worker
        self._lock = threading.Lock()
        self.pow_time_s = self.wait_time_s = self.work = 0.0
        self.queries = 0
        self.last_work = 0.0
        self.round_trips: list = []  # predict and top-up requests of each answered batch
        self.max_batch: int | None = None
        self.answered: list = []  # the challenges whose batches were answered (spent at the server)

    # -- plumbing ----------------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs):
        """(status, JSON object); a broken connection raises httpx.TransportError. A body that is not a
        JSON object becomes {"error": "not_json"}."""
        response = self._http.request(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {"error": "not_json", "detail": response.text[:200]}
        return response.status_code, body

    def _fail(self, status: int, body: dict, what: str):
        if status == 200:
            raise UserError(f"the server at {self.url} answered {what} with something that is not this API's "
                            f"({str(body)[:200]}); check --server")
        raise UserError(f"the server refused {what} ({status} {body.get('error', '')}): {body.get('detail')}")

    def _fields(self, body: dict, what: str, **types) -> dict:
        """`body`, once it has each field with its type; else the server is not this API."""
        for name, kind in types.items():
            if not isinstance(body.get(name), kind) or isinstance(body.get(name), bool):
                self._fail(200, body, what)
        return body

    def _reach(self, method: str, path: str, **kwargs):
        """_call, with a broken connection said as a UserError (outside the retry loop)."""
        try:
            return self._call(method, path, **kwargs)
        except self._httpx.TransportError as exc:
            raise UserError(f"cannot reach the server at {self.url} ({type(exc).__name__}: {exc}); check that it "
                            f"is running and the URL is right") from exc

    def account(self) -> dict:
        status, body = self._reach("GET", "/v1/account")
        if status != 200:
            self._fail(status, body, "the account request")
        self._fields(body, "the account request", queries=int, costs=dict, next=dict)
        if not isinstance(body["next"].get("batch"), int) or body["next"]["batch"] < 1:
            self._fail(200, body, "the account request")
        return body

    def challenge(self, batch: int) -> dict:
        for _ in range(self.retries):  # a key over its rate waits as the server says, then asks again
            status, body = self._call("POST", "/v1/challenge", json={"batch": int(batch)})
            if status != 429:
                break
            _wait_out(body)
        if status != 200:
            self._fail(status, body, f"a challenge for {batch} inputs")
        self._fields(body, "a challenge request", challenge=str, work=(int, float))
        if self.max_work is not None and body["work"] > self.max_work:
            raise UserError(f"the server asks for {body['work']:.3g} evaluations for {batch} inputs, over this "
                            f"client's limit of {self.max_work:.3g}")
        return body

    def solve(self, challenge: str) -> str:
        start = time.perf_counter()
        with self._solve_lock:
            solution, _ = self._solver.solve_target(challenge)
        with self._lock:
            self.pow_time_s += time.perf_counter() - start
        return solution

    # -- predictions -------------------------------------------------------------------------------
    def predict(self, x) -> np.ndarray:
        """Answers for every input of `x` (one array), in batches no larger than the server allows."""
        x = np.asarray(x)
        if self.max_batch is None:
            self.max_batch = self._server_max_batch()
        parts = [self._predict_batch(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
        return np.concatenate(parts) if parts else np.zeros((0,))

    def _server_max_batch(self) -> int:
        return int(self.account()["next"]["batch"])

    def _predict_batch(self, x: np.ndarray) -> np.ndarray:
        payload = tensors.encode(x)
        backoff = BACKOFF_S
        request, topup, trips, work = None, None, 0, 0.0
        for _ in range(self.retries):
            start, solving = time.perf_counter(), 0.0
            try:
                if request is None:
                    ch = self.challenge(len(x))
                    solved = time.perf_counter()
                    request = {"solution": self.solve(ch["challenge"]), "inputs": payload}
                    solving = time.perf_counter() - solved
                    work += float(ch["work"])
                trips += 1
                if topup is None:
                    status, body = self._call("POST", "/v1/predict", json=request)
                else:
                    status, body = self._call("POST", "/v1/topup", json={"solution": request["solution"],
                                                                         "topup": topup})
            except self._httpx.TransportError:  # the server went away: the same request again, once it is back
                time.sleep(backoff)
                backoff = min(5.0, backoff * 2)
                continue
            finally:
                with self._lock:  # everything but solving: the server's answers and the network
                    self.wait_time_s += time.perf_counter() - start - solving
            if status == 200:
                answers = self._answers(body, len(x))
                with self._lock:
                    self.queries += len(x)
                    self.work += work
                    self.last_work = work
                    self.round_trips.append(trips)
                    self.answered.append(request["solution"].rsplit("|", 1)[0])
                return answers
            code = body.get("error") if isinstance(body, dict) else None
            if status == 402 and code == "payment_required":
                due = body.get("topup")
                if not isinstance(due, dict) or not isinstance(due.get("challenge"), str) \
                        or not isinstance(due.get("work"), (int, float)):
                    self._fail(200, body, "the batch")
                if self.max_work is not None and due["work"] > self.max_work:
                    raise UserError(f"the server asks for a top-up of {due['work']:.3g} evaluations for {len(x)} "
                                    f"inputs, over this client's limit of {self.max_work:.3g}")
                topup = self.solve(due["challenge"])  # its time goes to pow_time_s
                work += float(due["work"])
                continue
            if code == "expired" and topup is not None:  # the sealed batch or its top-up expired: start over
                request, topup = None, None
                continue
            if status == 429:
                _wait_out(body)
                continue
            if code in NEW_CHALLENGE:
                request, topup = None, None
                continue
            self._fail(status, body, "the batch")
        raise UserError(f"the server at {self.url} did not answer a batch after {self.retries} attempts; "
                        f"check that it is running")

    def _answers(self, body: dict, n: int) -> np.ndarray:
        """The answers of a 200 reply, checked: one per input, labels or rows of probabilities."""
        output, answers = body.get("output"), body.get("answers")
        try:
            if output == "labels":
                out = np.asarray(answers, dtype=np.int64)
                ok = out.shape == (n,)
            elif output == "probs":
                out = np.asarray(answers, dtype=np.float32)
                ok = out.ndim == 2 and len(out) == n and bool(np.isfinite(out).all())
            else:
                ok = False
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            self._fail(200, body, f"a batch of {n} inputs")
        return out

    def close(self) -> None:
        if self._solver is not None:
            try:
                if self._own_solver:
                    self._solver.__exit__(None, None, None)
            finally:
                self._solver = None
                self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RemoteOracle:
    """The extraction loop's oracle for a live server (a models.oracle.Oracle): query(x) answers through an
    ApiClient. The server does the accounting and the pricing; this side records the measured PoW and
    waiting times, and settle() reports what was paid since the last round."""
    priced = True

    def __init__(self, client: ApiClient, *, output: str):
        self.client, self.output = client, output
        self._base = {"queries": 0, "query_time_s": 0.0, "pow_time_s": 0.0, "pow_work": 0.0}
        self._settled = (0.0, 0.0)  # the PoW seconds and work already reported by settle()

    @property
    def queries(self) -> int:
        return self._base["queries"] + self.client.queries

    @property
    def query_time_s(self) -> float:
        return self._base["query_time_s"] + self.client.wait_time_s

    @property
    def pow_time_s(self) -> float:
        return self._base["pow_time_s"] + self.client.pow_time_s

    @property
    def pow_work(self) -> float:
        return self._base["pow_work"] + self.client.work

    def query(self, x):
        import torch

        answers = self.client.predict(x.numpy())
        if self.output == "labels" and answers.dtype != np.int64:
            raise UserError("the server answers probabilities; run with --victim_output probs")
        if self.output == "probs" and answers.dtype != np.float32:
            raise UserError("the server answers labels only; this mode needs probabilities (the operator starts "
                            "the server with --victim_output probs)")
        return torch.from_numpy(answers)

    def totals(self) -> dict:
        """The server's account (costs) with this side's counts and times."""
        costs = self.client.account()["costs"]
        return {**costs, "queries": self.queries, "query_time_s": self.query_time_s}

    def settle(self, queries_before: int, time_before: float) -> Payment:
        """What the client solved since the last round: the server priced it, batch by batch."""
        paid = (self.pow_time_s - self._settled[0], self.pow_work - self._settled[1])
        self._settled = (self.pow_time_s, self.pow_work)
        return Payment(paid[0], paid[1], self.client.last_work)

    def describe(self) -> dict:
        return {}  # the server prices: its calibration is its operator's

    def state_dict(self) -> dict:
        return {"queries": self.queries, "query_time_s": self.query_time_s, "pow_time_s": self.pow_time_s,
                "pow_work": self.pow_work}

    def load_state_dict(self, state: dict) -> None:
        self._base = {k: type(self._base[k])(state.get(k, 0)) for k in self._base}
        self._settled = (self.pow_time_s, self.pow_work)

    def close(self) -> None:
        self.client.close()
