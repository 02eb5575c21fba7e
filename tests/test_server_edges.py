"""The server's edges, over real sockets against uvicorn with the guarded protocol: each one bounded and
answered in JSON (slow bodies, slow heads, huge heads, malformed heads, too many connections, bodies of
clients not yet authenticated)."""
from __future__ import annotations

import json
import socket
import time

import pytest

import server.app as app_module
from tests.server_helpers import state_url
from tests.test_server import add_user, make_service, parts  # noqa: F401


@pytest.fixture
def live(parts, tmp_path, monkeypatch):
    monkeypatch.setattr(app_module, "BODY_TIMEOUT_S", 1.0)
    monkeypatch.setattr(app_module, "HEAD_TIMEOUT_S", 1.0)
    monkeypatch.setattr(app_module, "MAX_CONNECTIONS", 4)
    svc = make_service(parts, state_url("sqlite", tmp_path))
    server = app_module.ThreadedServer(app_module.create_app(svc, max_body_bytes=200_000))
    try:
        yield {"port": server.port, "key": add_user(svc, "edge"), "svc": svc}
    finally:
        server.close()
        svc.store.close()


def connect(live) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", live["port"]), timeout=5)
    return s


def reply(s: socket.socket, timeout: float = 5.0) -> tuple:
    """(status, JSON body) of one response; (None, None) when the server closed without one."""
    s.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                return None, None
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        length = int([h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0])
        while len(rest) < length:
            rest += s.recv(65536)
    except (ConnectionResetError, TimeoutError, socket.timeout):
        return None, None
    status = int(head.split(b" ")[1])
    assert b"application/json" in head.lower(), head
    return status, json.loads(rest[:length])


def test_a_stalled_body_is_answered_408_in_json(live):
    s = connect(live)
    try:
        s.sendall(f"POST /v1/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-api-key: {live['key']}"
                  f"\r\ncontent-length: 5000\r\n\r\n{{\"solution\"".encode())
        start = time.time()
        status, body = reply(s)
        assert status == 408 and body["error"] == "body_timeout" and time.time() - start < 4
    finally:
        s.close()


def test_a_body_is_not_read_before_its_client_is_authenticated(live):
    s = connect(live)
    try:  # a large body announced, none sent: the answer comes at once, from the headers alone
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: 150000\r\n\r\n")
        status, body = reply(s, timeout=3)
        assert status == 401 and body["error"] == "missing_api_key"
    finally:
        s.close()


def test_a_silent_connection_is_closed_after_the_head_deadline(live):
    s = connect(live)
    try:
        s.settimeout(5)
        start = time.time()
        assert s.recv(100) == b"" and time.time() - start < 4  # closed by the server, no request ever began
    finally:
        s.close()


@pytest.mark.parametrize("raw", [
    b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 100_000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-bad: a\x01b\r\n\r\n",
    b"POST /v1/account HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
], ids=["huge-head", "control-character", "duplicate-content-length"])
def test_a_head_the_parser_refuses_gets_a_json_400(live, raw):
    s = connect(live)
    try:
        s.sendall(raw)
        status, body = reply(s)
        assert (status, body["error"]) in ((400, "bad_http"), (431, "headers_too_large"))
    finally:
        s.close()


def test_connections_over_the_cap_get_a_json_429(live):
    held = [connect(live) for _ in range(4)]
    try:
        time.sleep(0.2)
        extra = connect(live)
        try:
            status, body = reply(extra)
            assert status == 429 and body["error"] == "too_many_connections"
        finally:
            extra.close()
    finally:
        for s in held:
            s.close()


def test_a_locked_database_never_stalls_the_event_loop(live, tmp_path, monkeypatch):
    """Another process holds the SQLite state's WAL-index read locks (as during WAL recovery): the API key's
    lookup waits for them in a worker thread, never on the event loop, so requests that need no database
    are answered meanwhile, and the waiting one is answered once the lock is gone."""
    import subprocess
    import sys
    import threading

    import httpx

    svc, looking = live["svc"], threading.Event()
    real = svc.authenticate

    def watched(*args):
        looking.set()
        return real(*args)

    url = f"http://127.0.0.1:{live['port']}"
    assert httpx.get(f"{url}/v1/account", headers={"X-API-Key": live["key"]}).status_code == 200  # shm made
    monkeypatch.setattr(svc, "authenticate", watched)
    locker = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"fd = os.open({str(tmp_path / 'state.db-shm')!r}, os.O_RDWR)\n"
                               "fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 8, 120)\n"
                               "print('locked', flush=True)\ntime.sleep(4)"], stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"
        answered = {}
        waiting = threading.Thread(target=lambda: answered.update(account=httpx.get(
            f"{url}/v1/account", headers={"X-API-Key": live["key"]}, timeout=30).status_code))
        waiting.start()
        assert looking.wait(10), "the lookup never started"
        start = time.time()
        assert httpx.get(f"{url}/openapi.json", timeout=30).status_code == 200
        assert time.time() - start < 1.0 and locker.poll() is None  # answered while the lock was held
        waiting.join(30)
        assert answered == {"account": 200}
    finally:
        locker.kill()
        locker.wait()


class _Beat:
    def __init__(self, value: float):
        self.value = value


class _Worker:
    """A worker process as the supervisor sees it."""
    pids = iter(range(1000, 2000))

    def __init__(self):
        self.pid, self.killed, self.exitcode = next(self.pids), False, None

    def is_alive(self) -> bool:
        return not self.killed and self.exitcode is None

    def kill(self) -> None:
        self.killed = True

    def join(self, timeout=None) -> None:
        self.exitcode = -9 if self.killed else (self.exitcode if self.exitcode is not None else 1)


def _supervisor(processes: int, now: list, **kw):
    """A Supervisor on a fake clock whose _start makes fake workers (recorded in its `started` list)."""
    from server.serving import Supervisor

    sup = Supervisor(None, None, processes, clock=lambda: now[0], **kw)
    sup.started = []

    def start(index):
        sup.workers[index], sup.beats[index] = _Worker(), _Beat(0.0)
        sup.state[index], sup.since[index] = "starting", now[0]
        sup.pause.setdefault(index, 0.5)
        sup.started.append(index)
    sup._start = start
    return sup


def test_the_supervisor_kills_a_worker_silent_past_the_timeout_and_only_it():
    from common.errors import UserError
    from server.serving import Supervisor

    now = [1000.0]
    sup = _supervisor(3, now, timeout_s=10.0)
    for index in range(3):
        sup._start(index)
    sup.state.update({0: "serving", 1: "serving"})  # 2 is still starting: it has not beaten
    sup.beats[0].value, sup.beats[1].value = 995.0, 999.0
    assert sup.kill_silent() == []
    now[0] = 1005.5  # worker 0: 10.5 s silent; worker 1: 6.5 s
    assert sup.kill_silent() == [0]
    assert [w.killed for w in sup.workers.values()] == [True, False, False]
    now[0] = 1e6
    assert sup.kill_silent() == [1], "a dead worker is not killed again, a starting one never for silence"
    for bad in (float("nan"), float("inf"), 1.0, -5.0):
        with pytest.raises(UserError, match="worker timeout"):
            Supervisor(None, None, 2, timeout_s=bad)
    with pytest.raises(UserError, match="start timeout"):
        Supervisor(None, None, 2, timeout_s=30, start_timeout_s=float("nan"))


def test_a_worker_hung_while_it_restarts_holds_up_no_other_restart():
    """Worker 0's replacement hangs before it serves (SIGSTOP while it starts); worker 1 then dies: worker 1
    is restarted after its pause all the same, and worker 0 is killed once past the start timeout, then
    restarted after a pause that doubles."""
    now = [0.0]
    sup = _supervisor(2, now, timeout_s=5.0, start_timeout_s=60.0)
    for index in range(2):
        sup._start(index)
    sup.step([], [(0, sup.workers[0].pid, None), (1, sup.workers[1].pid, None)])
    assert sup.state == {0: "serving", 1: "serving"}
    sup.workers[0].exitcode = -9  # killed while serving
    sup.step([0], [])
    assert sup.state[0] == "down" and sup.started == [0, 1]
    now[0] = 0.5
    sup.step([], [])
    assert sup.started == [0, 1, 0] and sup.state[0] == "starting"  # its replacement, which hangs
    now[0] = 1.0
    sup.workers[1].exitcode = -9
    sup.step([1], [])
    now[0] = 1.5
    sup.step([], [])
    assert sup.started == [0, 1, 0, 1], "worker 1 restarted while worker 0 hangs in its start"
    sup.step([], [(1, sup.workers[1].pid, None)])
    assert sup.state[1] == "serving" and not sup.workers[0].killed
    now[0] = 61.0
    sup.step([], [])
    assert sup.workers[0].killed, "past the start timeout"
    sup.step([0], [])
    assert sup.state[0] == "down" and sup.pause[0] == 1.0, "died before serving: twice its last pause"
    now[0] = 61.9
    sup.step([], [])
    assert sup.started == [0, 1, 0, 1]
    now[0] = 62.0
    sup.step([], [(0, 12345, None)])  # an old worker's event is ignored
    assert sup.started == [0, 1, 0, 1, 0] and sup.state[0] == "starting"
    sup.step([], [(0, sup.workers[0].pid, "the store is locked")])
    assert sup.state[0] == "starting", "its error is shown; its exit then restarts it"
