"""The HTTP layer: FastAPI routes over PredictionService, the connection's guards, and JSON errors.

Every rejection is a 4xx with {"error": CODE, "detail": WHAT TO DO}. The routes run in worker threads
(plain functions, which FastAPI runs there; predict hands its whole body over in one hop); their number
is set with the torch threads (serve sizes both together, so that concurrent requests do not
oversubscribe the cores).

Guards, each bounded and answered in JSON: the client is authenticated (API key, or address range when
anonymous) before its body is read; a body over the limit is refused from its Content-Length or as it
streams, and one that stalls for BODY_TIMEOUT_S is answered 408; a request head must arrive within
HEAD_TIMEOUT_S and fit in MAX_HEAD_BYTES; at most max_connections connections are open at once (the
next is answered 429 and closed); a request the HTTP parser rejects gets a JSON 400.
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import socket
import threading
from contextlib import asynccontextmanager

import anyio.to_thread
import uvicorn
from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, StrictInt, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import UserError
from server.service import ApiError, PredictionService
from server.store import DRIVER_ERRORS

log = logging.getLogger(__name__)
API_VERSION = "v1"
BODY_TIMEOUT_S = 10.0  # the longest pause between two parts of a request body
HEAD_TIMEOUT_S = 10.0  # a request head must arrive whole within this after the connection (or last answer)
MAX_HEAD_BYTES = 64 * 1024  # request line and headers together
PREDICT = f"/{API_VERSION}/predict"
SETTLED = (PREDICT, f"/{API_VERSION}/topup")  # the routes whose commit checks the user again
MAX_CONNECTIONS = 512  # open connections at once, per server process
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # control characters (tab allowed) in a header value


class ChallengeIn(BaseModel):
    batch: StrictInt | None = Field(None, description="inputs the challenge will pay for (default: the server's "
                                                "largest batch); the price grows with it")


class ChallengeOut(BaseModel):
    challenge: str = Field(description="pow2|KIND|WORK|SUBS|BATCH|ISSUED|EXPIRES|USER|RAND|MAC")
    puzzle: str
    work: float = Field(description="expected hash evaluations in all")
    subs: int
    batch: int
    issued: int
    expires: int
    expected_seconds: float = Field(description="the server's estimate of the solve time")


class TensorIn(BaseModel):
    dtype: str = Field(description="uint8 (0..255) or float32 ([0, 1])")
    shape: list = Field(description="[N, C, H, W] for the server's dataset, N at most the challenge's batch")
    data: str = Field(description="base64 of the raw little-endian bytes, C order")


class PredictIn(BaseModel):
    solution: str = Field(description="the challenge text, '|', and its nonces (comma-separated hex)")
    inputs: TensorIn


class TopupIn(BaseModel):
    solution: str = Field(description="the batch's own solution, as sent to /v1/predict")
    topup: str = Field(description="the pow3 top-up challenge of the 402 reply, '|', and its nonces")


class PredictOut(BaseModel):
    output: str = Field(description="labels or probs")
    queries: int
    answers: list
    account: dict | None = None
    redelivered: bool = False


class AccountOut(BaseModel):
    user: str
    account: str
    queries: int
    batches: int
    answer_s: float
    costs: dict
    credit: float = Field(description="work paid beyond the prices so far; it pays toward the next batches")
    priced: float = Field(description="the work of every answered batch's price, in all")
    next: dict


class ErrorOut(BaseModel):
    error: str
    detail: str | list


class PaymentOut(ErrorOut):
    topup: ChallengeOut = Field(description="solve it and POST it with the batch's solution to /v1/topup")
    paid: float = Field(description="work paid for this batch so far")
    owed: float = Field(description="work its price still lacks")


ERRORS = {code: {"model": ErrorOut} for code in (400, 401, 403, 408, 409, 410, 413, 422, 429, 431)}
PAYMENT = {**ERRORS, 402: {"model": PaymentOut, "description": "the batch is answered but sealed: pay the top-up"}}


class Guard:
    """Pure ASGI middleware: authenticates the client of a /v1/ request before reading its body (the
    client goes to scope["state"]["client"]), then reads the body, never more than `limit` bytes and
    never waiting more than BODY_TIMEOUT_S between its parts, and hands it on whole."""

    def __init__(self, app, limit: int, service: PredictionService):
        self.app, self.limit, self.service = app, limit, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw_headers = scope.get("headers") or []
        if sum(len(k) + len(v) + 4 for k, v in raw_headers) > MAX_HEAD_BYTES:
            return await _send_json(send, 431, {"error": "headers_too_large", "detail": f"the request's headers "
                                                f"exceed {MAX_HEAD_BYTES} bytes; send fewer or shorter ones"},
                                    {"connection": "close"})
        if any(_CONTROL.search(v) for _, v in raw_headers):
            return await _send_json(send, 400, {"error": "bad_http", "detail": "a header value holds a control "
                                                "character; send printable header values"}, {"connection": "close"})
        headers = dict(raw_headers)
        if scope.get("path", "").startswith(f"/{API_VERSION}/") and not await self._authenticate(scope, headers, send):
            return
        declared = headers.get(b"content-length")
        if declared is not None and self.limit:
            try:
                too_big = int(declared) > self.limit
            except ValueError:
                too_big = True
            if too_big:
                return await _send_json(send, 413, {"error": "body_too_large",
                                                    "detail": f"the request body exceeds {self.limit} bytes"})
        whole = await self._body(receive, send)
        if whole is None:
            return
        if scope.get("method") == "POST" and scope.get("path") == PREDICT:  # the hot route, served here: the
            # router's middleware and dependency stack cost a batch some 3% of the server's throughput
            status, raw, extra = await anyio.to_thread.run_sync(
                predict_reply, self.service, scope["state"]["client"], headers.get(b"content-type"), whole["body"])
            return await _send_raw(send, status, raw, extra)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return whole
            return await receive()

        await self.app(scope, replay, send)

    async def _authenticate(self, scope, headers: dict, send) -> bool:
        """Put the request's client in scope["state"]["client"]; False once a rejection has been sent."""
        raw = headers.get(b"x-api-key")
        address = (scope.get("client") or (None,))[0]
        key = raw.decode("latin-1") if raw is not None else None
        try:
            # a batch's commit reads its user again, so predict and topup may take the client from memory
            client = self.service.remembered(key, address) if scope.get("path") in SETTLED else None
            if client is None:  # in a worker thread: a SQLite reader waits up to 10 s while another process
                # holds the WAL index (WAL recovery), and on the event loop that wait would stall every connection
                client = await anyio.to_thread.run_sync(self.service.authenticate, key, address)
        except (ApiError, UserError, *DRIVER_ERRORS) as exc:
            status, body, extra = error_reply(exc)
            await _send_json(send, status, body, extra)
            return False
        scope.setdefault("state", {})["client"] = client
        return True

    async def _body(self, receive, send) -> dict | None:
        """The whole body as one http.request message, never more than the limit and never waiting more
        than BODY_TIMEOUT_S between its parts; None once a rejection has been sent (or the client left)."""
        chunks, seen = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), BODY_TIMEOUT_S)
            except asyncio.TimeoutError:
                await _send_json(send, 408, {"error": "body_timeout", "detail": f"the request body stalled for "
                                             f"{BODY_TIMEOUT_S:g} s; send it whole"}, {"connection": "close"})
                return None
            if message["type"] != "http.request":
                return None  # the client went away
            seen += len(message.get("body", b""))
            if self.limit and seen > self.limit:
                await _send_json(send, 413, {"error": "body_too_large",
                                             "detail": f"the request body exceeds {self.limit} bytes"})
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}


async def _send_json(send, status: int, body: dict, headers: dict | None = None) -> None:
    await _send_raw(send, status, json.dumps(body).encode(), headers)


async def _send_raw(send, status: int, raw: bytes, headers: dict | None = None) -> None:
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": raw})


def _raw(status: int, body: dict) -> bytes:
    """A whole JSON response that closes the connection, below the ASGI app."""
    data = json.dumps(body).encode()
    reason = {400: "Bad Request", 429: "Too Many Requests", 431: "Request Header Fields Too Large"}[status]
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
            f"connection: close\r\n\r\n").encode() + data


class _Guards:
    """The connection's guards, mixed into a uvicorn protocol class: a cap on open connections (the next
    is answered 429 and closed), a deadline for each request head, a cap on its size (431), and JSON for
    what the HTTP parser rejects (400)."""
    HEAD_SLICE = 8192  # while a head is arriving, bytes are fed to the parser this many at a time

    def connection_made(self, transport):
        super().connection_made(transport)
        if len(self.connections) > MAX_CONNECTIONS:
            transport.write(_raw(429, {"error": "too_many_connections",
                                       "detail": "the server holds too many connections; retry shortly"}))
            transport.close()
            return
        self._expect_head()

    def _expect_head(self):
        self._head_bytes, self._in_head = 0, True
        self.loop.call_later(HEAD_TIMEOUT_S, self._head_timeout, self.cycle)

    def _head_timeout(self, cycle):
        if self.cycle is cycle and not self.transport.is_closing():  # no request began since
            self.transport.close()

    def on_response_complete(self):
        super().on_response_complete()
        if not self.transport.is_closing():
            self._expect_head()

    def data_received(self, data: bytes) -> None:
        view = memoryview(data)
        while view and getattr(self, "_in_head", False) and not self.transport.is_closing():
            part, view = view[:self.HEAD_SLICE], view[self.HEAD_SLICE:]
            self._head_bytes += len(part)
            if self._head_bytes > MAX_HEAD_BYTES + self.HEAD_SLICE:
                self.transport.write(_raw(431, {"error": "headers_too_large", "detail": f"the request head "
                                                f"exceeds {MAX_HEAD_BYTES} bytes; send fewer or shorter headers"}))
                self.transport.close()
                return
            super().data_received(bytes(part))
        if view and not self.transport.is_closing():
            super().data_received(bytes(view))

    def _head_done(self):
        self._in_head = False

    def send_400_response(self, msg: str) -> None:
        self.transport.write(_raw(400, {"error": "bad_http", "detail": f"{msg}; send a well-formed HTTP/1.1 "
                                                                      f"request"}))
        self.transport.close()


def guarded_protocol():
    """uvicorn's HTTP protocol (httptools where installed, else h11) with the connection's guards."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools
        from uvicorn.protocols.http.h11_impl import H11Protocol

        class GuardedH11Protocol(_Guards, H11Protocol):
            def data_received(self, data: bytes) -> None:  # h11 bounds the head itself (serve sets the size)
                H11Protocol.data_received(self, data)
        return GuardedH11Protocol

    class GuardedHttpToolsProtocol(_Guards, HttpToolsProtocol):
        def on_headers_complete(self):
            self._head_done()
            super().on_headers_complete()

    return GuardedHttpToolsProtocol


class _Server(uvicorn.Server):
    """uvicorn's server with an event set once it listens (or once its run ends, started or not)."""

    def __init__(self, config):
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets=None):
        await super().startup(sockets=sockets)
        self.ready.set()


class ThreadedServer:
    """The app under uvicorn with the guarded protocol, on a free loopback port, in a thread of this
    process (sybil over HTTP, the benchmarks, the edge tests). close() stops it and frees the port."""

    def __init__(self, app, *, start_timeout_s: float = 30.0):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = _Server(uvicorn.Config(app, log_level="error", access_log=False, http=guarded_protocol(),
                                             h11_max_incomplete_event_size=MAX_HEAD_BYTES))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.server.ready.wait(start_timeout_s) or not self.server.started:
            self.close()
            raise RuntimeError("the threaded server did not start")

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.server.ready.set()  # a server that failed to start wakes its starter too

    def close(self) -> None:
        try:
            self.server.should_exit = True
            self.thread.join(timeout=30)
        finally:
            self.sock.close()


def create_app(service: PredictionService, *, max_body_bytes: int, threads: int | None = None,
               describe: dict | None = None) -> FastAPI:
    """The ASGI application. `threads` caps the worker threads that run the routes."""
    @asynccontextmanager
    async def lifespan(app):
        if threads:
            anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        # the model, the libraries and the service are loaded: keep them out of the collector's full
        # passes, which otherwise stop every request thread for 200 ms or more now and then
        gc.collect()
        gc.freeze()
        yield

    app = FastAPI(title="Calibrated proof-of-work prediction API", version="1",
                  description="Every batch of predictions costs a proof-of-work whose difficulty grows with the "
                              "client's cumulative query cost. Flow: POST /v1/challenge, solve it, POST /v1/predict.",
                  lifespan=lifespan)

    _add_error_handlers(app)
    _add_routes(app, service, describe)
    app.add_middleware(Guard, limit=max_body_bytes, service=service)
    return app


def error_reply(exc: Exception) -> tuple:
    """(status, JSON body, headers) answering `exc`: the service's own rejections (4xx), invalid requests
    (422), an unavailable store (503) and, for a bug, 500 with the traceback in the operator's log."""
    if isinstance(exc, ApiError):
        return exc.status, exc.body(), {"retry-after": f"{max(1, round(exc.retry_after))}"} if exc.retry_after else {}
    if isinstance(exc, RequestValidationError):
        detail = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
        return 422, {"error": "invalid_request", "detail": detail}, {}
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code, {"error": "http_error", "detail": str(exc.detail)}, {}
    if isinstance(exc, (UserError, *DRIVER_ERRORS)):  # the store is locked or unreachable: not the client's
        log.error("store unavailable: %s: %s", type(exc).__name__, exc)  # fault, and no answer left
        return 503, {"error": "unavailable", "detail": "the server's database is unavailable; retry later"}, {
            "retry-after": "5"}
    log.error("internal error", exc_info=exc)  # a bug: still JSON, and logged with its traceback
    return 500, {"error": "internal", "detail": "an internal error; the operator's log has it"}, {}


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answers JSON (error_reply)."""
    async def handler(request: Request, exc: Exception):
        status, body, headers = error_reply(exc)
        return JSONResponse(body, status_code=status, headers=headers or None)

    for error in (ApiError, RequestValidationError, StarletteHTTPException, UserError, *DRIVER_ERRORS, Exception):
        app.add_exception_handler(error, handler)


def predict_reply(service: PredictionService, client, content_type: bytes | None, raw: bytes) -> tuple:
    """(status, JSON bytes, headers) of POST /v1/predict, in a worker thread: the body is checked and parsed
    there (on the event loop, 70 KB of JSON would hold up every other connection), answered, priced and
    settled, and the answer serialised (_answer_json)."""
    try:
        _json_content(content_type.decode("latin-1") if content_type else None)
        body = _parsed(PredictIn, raw)
        return 200, _answer_json(service.predict(client, body.solution, body.inputs.model_dump())), {}
    except Exception as exc:  # noqa: BLE001 - every error answers JSON, as the router's handlers answer it
        status, body, headers = error_reply(exc)
        return status, json.dumps(body).encode(), headers


def _answer_json(reply: dict) -> bytes:
    """A PredictOut's JSON, serialised here by pydantic without validation (the service's reply has exactly
    its fields and types): FastAPI's response validation would cost each request one more hop to a worker
    thread and a walk over every answer."""
    body = PredictOut.model_construct(output=reply["output"], queries=reply["queries"], answers=reply["answers"],
                                      account=reply.get("account"), redelivered=reply.get("redelivered", False))
    return body.model_dump_json().encode()


def _parsed(model: type[BaseModel], raw: bytes) -> BaseModel:
    """A request body parsed and validated as `model`; invalid bodies raise what FastAPI raises (422)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def _json_content(content_type: str | None) -> None:
    """Refuse (422, as FastAPI refuses for the other routes) a body not declared as JSON."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind != "application/json" and not (kind.startswith("application/") and kind.endswith("+json")):
        raise RequestValidationError([{"loc": ("body",), "msg": f"send the body as JSON with the header "
                                       f"Content-Type: application/json (not {content_type or 'none'})"}])


def _inline_schema(model: type[BaseModel]) -> dict:
    """`model`'s JSON schema with its nested models written in place, for a route's openapi_extra."""
    schema = model.model_json_schema()
    nested = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(nested[node["$ref"].rsplit("/", 1)[1]])
            return {k: resolve(v) for k, v in node.items()}
        return [resolve(v) for v in node] if isinstance(node, list) else node
    return resolve(schema)


def _add_routes(app: FastAPI, service: PredictionService, describe: dict | None) -> None:
    """The API's routes: challenge, predict, topup, account, and the health check."""
    def client_of(request: Request, x_api_key):
        client = request.scope.get("state", {}).get("client")  # the Guard authenticated it already
        return client if client is not None else service.authenticate(
            x_api_key, request.client.host if request.client else None)

    @app.post(f"/{API_VERSION}/challenge", response_model=ChallengeOut, responses=ERRORS,
              summary="A signed challenge for this client's next batch, at its expected price")
    def challenge(request: Request, body: ChallengeIn | None = None, x_api_key: str | None = Header(None)):
        return service.challenge(client_of(request, x_api_key), body.batch if body is not None else None)

    @app.post(f"/{API_VERSION}/predict", response_model=PredictOut, responses=PAYMENT,
              openapi_extra={"requestBody": {"required": True,
                                             "content": {"application/json": {"schema": _inline_schema(PredictIn)}}}},
              summary="Answers for a batch, priced by its own cost once seen: 200 when paid, else 402 and a top-up")
    async def predict(request: Request, x_api_key: str | None = Header(None)):
        # served by the Guard ahead of the router (predict_reply); declared here for the API's schema
        raw, client = await request.body(), client_of(request, x_api_key)
        status, body, headers = await anyio.to_thread.run_sync(
            predict_reply, service, client, request.headers.get("content-type", "").encode("latin-1"), raw)
        return Response(body, status_code=status, media_type="application/json", headers=headers or None)

    @app.post(f"/{API_VERSION}/topup", response_model=PredictOut, responses=PAYMENT,
              summary="Pay a sealed batch's top-up: its answers, or another 402 if its price rose meanwhile")
    def topup(request: Request, body: TopupIn, x_api_key: str | None = Header(None)):
        return Response(_answer_json(service.topup(client_of(request, x_api_key), body.solution, body.topup)),
                        media_type="application/json")

    @app.get(f"/{API_VERSION}/account", response_model=AccountOut, responses=ERRORS,
             summary="This client's account: queries, costs, credit and the next batch's expected price")
    def account(request: Request, x_api_key: str | None = Header(None)):
        return service.account(client_of(request, x_api_key))

    @app.get("/healthz", summary="Liveness: the server answers and its database is reachable")
    def healthz():
        service.store.account("__healthz__")
        return {"status": "ok", **(describe or {})}
