"""The HTTP layer: FastAPI routes over PredictionService, a body-size limit, and JSON errors.

Every rejection is a 4xx with {"error": CODE, "detail": WHAT TO DO}. The routes are plain functions,
so FastAPI runs them in its worker threads; their number is set with the torch threads (serve sizes
both together, so that concurrent requests do not oversubscribe the cores).
"""
from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import UserError
from server.service import ApiError, PredictionService
from server.store import DRIVER_ERRORS

log = logging.getLogger(__name__)
API_VERSION = "v1"


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
    next: dict


class ErrorOut(BaseModel):
    error: str
    detail: str | list


ERRORS = {code: {"model": ErrorOut} for code in (400, 401, 403, 409, 410, 413, 422, 429)}


class BodyLimit:
    """Pure ASGI middleware: a request body over `limit` bytes is answered 413 before it is read whole."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.limit
            except ValueError:
                too_big = True
            if too_big:
                return await _send_json(send, 413, {"error": "body_too_large",
                                                    "detail": f"the request body exceeds {self.limit} bytes"})
        chunks, seen = [], 0
        while True:  # read the body first, never more than the limit, then hand it on whole
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            seen += len(message.get("body", b""))
            if seen > self.limit:
                return await _send_json(send, 413, {"error": "body_too_large",
                                                    "detail": f"the request body exceeds {self.limit} bytes"})
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return whole
            return await receive()

        await self.app(scope, replay, send)


async def _send_json(send, status: int, body: dict) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]})
    await send({"type": "http.response.body", "body": raw})


def create_app(service: PredictionService, *, max_body_bytes: int, threads: int | None = None,
               describe: dict | None = None) -> FastAPI:
    """The ASGI application. `threads` caps the worker threads that run the routes."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        if threads:
            import anyio.to_thread
            anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        yield

    app = FastAPI(title="Calibrated proof-of-work prediction API", version="1",
                  description="Every batch of predictions costs a proof-of-work whose difficulty grows with the "
                              "client's cumulative query cost. Flow: POST /v1/challenge, solve it, POST /v1/predict.",
                  lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        headers = {"Retry-After": f"{max(1, round(exc.retry_after))}"} if exc.retry_after else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        detail = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
        return JSONResponse({"error": "invalid_request", "detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": "http_error", "detail": str(exc.detail)}, status_code=exc.status_code)

    async def unavailable(request: Request, exc: Exception):  # the store is locked or unreachable: not the
        log.error("store unavailable: %s: %s", type(exc).__name__, exc)  # client's fault, and no answer left
        return JSONResponse({"error": "unavailable", "detail": "the server's database is unavailable; retry later"},
                            status_code=503, headers={"Retry-After": "5"})

    for error in (UserError, *DRIVER_ERRORS):
        app.add_exception_handler(error, unavailable)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):  # a bug: still JSON, and logged with its traceback
        log.exception("internal error")
        return JSONResponse({"error": "internal", "detail": "an internal error; the operator's log has it"},
                            status_code=500)

    @app.post(f"/{API_VERSION}/challenge", response_model=ChallengeOut, responses=ERRORS,
              summary="A signed challenge for this key's next batch, priced from its cumulative cost")
    def challenge(body: ChallengeIn | None = None, x_api_key: str | None = Header(None)):
        user = service.authenticate(x_api_key)
        return service.challenge(user, body.batch if body is not None else None)

    @app.post(f"/{API_VERSION}/predict", response_model=PredictOut, responses=ERRORS,
              summary="Answers for a batch, paid with a solved challenge; charged before it is sent")
    def predict(body: PredictIn, x_api_key: str | None = Header(None)):
        user = service.authenticate(x_api_key)
        return service.predict(user, body.solution, body.inputs.model_dump())

    @app.get(f"/{API_VERSION}/account", response_model=AccountOut, responses=ERRORS,
             summary="This key's account: queries, costs and the next batch's price")
    def account(x_api_key: str | None = Header(None)):
        return service.account(service.authenticate(x_api_key))

    @app.get("/healthz", summary="Liveness: the server answers and its database is reachable")
    def healthz():
        service.store.account("__healthz__")
        return {"status": "ok", **(describe or {})}

    if max_body_bytes:
        app.add_middleware(BodyLimit, limit=max_body_bytes)
    return app
