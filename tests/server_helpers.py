"""What the server tests share: a service over a real mnist-5k victim, stores of both kinds, solving."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from server.service import ApiError
from tests.conftest import ROOT

BASELINE = "queries,query_time_s,entropy_cost,privacy_cost,privacy_eps,gap_cost\n" + "".join(
    f"{q},{0.001 * q:.4f},{0.02 * q:.4f},{0.2 * q:.3f},{q / 50:.3f},{0.03 * q:.3f}\n" for q in range(64, 1025, 64))
TIMING = ("puzzle,solver,workers,difficulty,expected_work,trials,mean_tries,mean_s,median_s,p90_s,rate\n"
          "sha256,python,1,1000,1000,3,1000,0.0003,0.0003,0.0003,3000000\n"
          "sha256,python,1,100000,100000,3,100000,0.0303,0.03,0.04,3300000\n")
PG_ENV = "POW_TEST_POSTGRES"


def postgres_dsn() -> str:
    """A DSN on a fresh schema of the throwaway cluster .ci/run starts, or a skip that says how to get one."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"no PostgreSQL for the store tests: ${PG_ENV} is unset (.ci/run starts a cluster with "
                    f"scripts/postgres.sh; locally: eval \"$(bash scripts/postgres.sh start)\")")
    import psycopg
    try:
        with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
            schema = "t" + uuid.uuid4().hex[:12]
            conn.execute(f"CREATE SCHEMA {schema}")
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at ${PG_ENV} is not reachable ({str(exc).strip()[:80]})")
    return f"{base}?options=-csearch_path%3D{schema}"


def state_url(kind: str, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}" if kind == "sqlite" else postgres_dsn()


def race(n: int, call) -> list:
    """`call(i)` in n threads released at once; each one's status (200, or its ApiError's), in the order
    they finished."""
    barrier, statuses = threading.Barrier(n), []

    def go(i):
        barrier.wait()
        try:
            call(i)
            statuses.append(200)
        except ApiError as exc:
            statuses.append(exc.status)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list, *, env: dict, timeout_s: float = 90.0):
    """`python main.py serve ARGS` in a subprocess; returns it once /healthz answers."""
    port = int(args[args.index("--port") + 1])
    log = open(env["SERVER_LOG"], "ab")
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "serve", *map(str, args)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    await_healthy(proc, port, timeout_s=timeout_s, log=Path(env["SERVER_LOG"]))
    return proc


def await_healthy(proc, port: int, *, timeout_s: float = 90.0, log: Path | None = None) -> None:
    """Until the server `proc` answers /healthz on `port`; an AssertionError if it exits or takes too long."""
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-2000:] if log is not None else ""
            raise AssertionError(f"the server exited ({proc.returncode}): {tail}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the server did not start in time")
