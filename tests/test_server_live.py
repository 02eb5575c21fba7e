"""The server as users run it: `main.py serve` under uvicorn, the admin commands, the client, `query`,
`extract --server`, and a crash: SIGKILL mid-load, restart, and every answer accounted exactly once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from data.registry import load_splits
from server.client import ApiClient
from server.store import open_store
from tests.conftest import ROOT, run_cli
from tests.server_helpers import BASELINE, TIMING, await_healthy, free_port, start_server, state_url


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    (root / "baseline.csv").write_text(BASELINE)
    (root / "timing.csv").write_text(TIMING)
    return root


def serve_args(victim_path, files, url, port):
    return ["--victim_path", victim_path, "--calibration", files / "baseline.csv", "--state", url,
            "--port", port, "--puzzle", "sha256", "--timing_table", "measured", "--timing_csv",
            files / "timing.csv", "--device", "cpu", "--max_batch", "32", "--key_file", files / "server.key"]


def admin(*args):
    r = run_cli("serve-admin", *args)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def keyfile(files):
    admin("init", "--key_file", files / "server.key", "--state", f"sqlite:///{files / 'init.db'}")
    assert (files / "server.key").stat().st_mode & 0o777 == 0o600
    return files / "server.key"


def test_admin_commands_and_a_query_from_the_cli(victim_path, files, keyfile, tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    r = run_cli("serve-admin", "init", "--key_file", keyfile, "--state", url)
    assert r.returncode == 2 and "never overwritten" in r.stderr
    key = admin("add-user", "alice", "--state", url).splitlines()[0]
    assert key.startswith("pk_") and key not in (tmp_path / "state.db").read_bytes().decode("latin-1")
    assert "alice" in admin("list-users", "--state", url)
    port = free_port()
    env = {**os.environ, "SERVER_LOG": str(tmp_path / "server.log")}
    server = start_server(serve_args(victim_path, files, url, port), env=env)
    try:
        x = load_splits("mnist-5k", "data").pool_x[:5].numpy()
        np.save(tmp_path / "x.npy", x)
        r = run_cli("query", "--server", f"http://127.0.0.1:{port}", "--input", tmp_path / "x.npy",
                    "--out", tmp_path / "y.npy", "--workers", "1", env_key=key)
        assert r.returncode == 0, r.stderr
        assert np.load(tmp_path / "y.npy").shape == (5,) and "answers:" in r.stdout
        r = run_cli("extract", "--server", f"http://127.0.0.1:{port}", "--mode", "standard", "--budget", "64",
                    "--query_batch", "32", "--batches_per_round", "1", "--stolen_epochs", "1", "--workers", "1",
                    "--victim_path", victim_path, "--device", "cpu", "--out_dir", tmp_path / "run", env_key=key)
        assert r.returncode == 0, r.stderr
        import pandas as pd
        log = pd.read_csv(tmp_path / "run" / "log.csv")
        assert list(log["queries"]) == [32, 64] and (log["pow_time_s"] > 0).all() and (log["entropy_cost"] > 0).all()
        assert (log["total_time_s"] > log["query_time_s"]).all()
        assert key not in (tmp_path / "run" / "params.json").read_text(), "the API key must not be saved"
        assert "alice" in admin("list-users", "--state", url) and " 69" in admin("list-users", "--state", url)
        admin("revoke", "alice", "--state", url)
        r = run_cli("query", "--server", f"http://127.0.0.1:{port}", "--input", tmp_path / "x.npy",
                    "--api_key", key, "--workers", "1")
        assert r.returncode == 2 and "revoked" in r.stderr
    finally:
        server.kill()
        server.wait()


def add_clients(url: str, n: int = 4) -> list:
    """n users c0..c{n-1} on the store at `url`; their API keys."""
    from server.keys import hash_api_key, new_api_key
    store = open_store(url)
    keys = []
    try:
        for i in range(n):
            keys.append(new_api_key())
            store.add_user(f"c{i}", hash_api_key(keys[-1]), f"c{i}")
    finally:
        store.close()
    return keys


class Load:
    """4 clients, 10 batches of 4 to 6 queries each, in threads; `going` is set once 40 answers came back."""

    def __init__(self, port: int, keys: list):
        self.images = load_splits("mnist-5k", "data").pool_x[:400].numpy()
        self.clients = [ApiClient(f"http://127.0.0.1:{port}", k, workers=1, retries=40) for k in keys]
        self.received = [0] * len(keys)
        self.errors = []
        self.going = threading.Event()
        self.threads = [threading.Thread(target=self._load, args=(i,)) for i in range(len(keys))]
        for t in self.threads:
            t.start()

    def _load(self, i):
        try:
            for j in range(10):
                x = self.images[(40 * i + 4 * j) % 390:(40 * i + 4 * j) % 390 + 4 + j % 3]
                self.received[i] += len(self.clients[i].predict(x))
                if sum(self.received) >= 40:
                    self.going.set()
        except Exception as exc:  # noqa: BLE001 - reported by join
            self.errors.append(repr(exc))

    def join(self):
        for t in self.threads:
            t.join(120)
        assert not any(t.is_alive() for t in self.threads), "the load did not finish"
        assert not self.errors, self.errors

    def close(self):
        for c in self.clients:
            c.close()

    def check_accounts(self, url: str):
        """Every answer received is charged once, and every spent challenge is still spent."""
        import hashlib
        store = open_store(url)
        try:
            for i, c in enumerate(self.clients):
                assert self.received[i] == c.queries == store.account(f"c{i}").queries, (i, self.received, c.queries)
                for text in c.answered:
                    assert store.spent(hashlib.sha256(text.encode()).hexdigest()) is not None
            assert store.spent_count() == sum(len(c.answered) for c in self.clients) == 40
        finally:
            store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_sigkill_mid_load_loses_no_answer_and_charges_none_twice(victim_path, files, keyfile, tmp_path, kind):
    url = state_url(kind, tmp_path)
    keys = add_clients(url)
    port = free_port()
    env = {**os.environ, "SERVER_LOG": str(tmp_path / "server.log")}
    args = serve_args(victim_path, files, url, port)
    server = start_server(args, env=env)
    load = Load(port, keys)
    try:
        assert load.going.wait(60), "the load did not get going"
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        killed_at = sum(load.received)
        server = start_server(args, env=env)
        load.join()
        assert killed_at < sum(load.received), "the kill came after the load"
    finally:
        server.kill()
        server.wait()
        load.close()
    load.check_accounts(url)


def workers_of(pid: int) -> list:
    """The live serve workers of supervisor `pid`: its children that multiprocessing spawned."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid \
                    and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            continue
    return sorted(found)


def await_workers(pid: int, count: int, *, gone=(), timeout_s: float = 90.0) -> list:
    """The supervisor's workers once there are `count` of them and none of `gone` among them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = workers_of(pid)
        if len(found) == count and not set(found) & set(gone):
            return found
        time.sleep(0.1)
    raise AssertionError(f"supervisor {pid} has workers {workers_of(pid)}, not {count} without {list(gone)}")


def await_serving(log: Path, timeout_s: float = 120.0) -> None:
    """Until the supervisor says every worker serves (/healthz answers once the first one does)."""
    deadline = time.monotonic() + timeout_s
    while "serving mnist-5k on" not in log.read_text():
        assert time.monotonic() < deadline, f"not every worker started: {log.read_text()[-2000:]}"
        time.sleep(0.1)


def test_processes_share_one_port_and_state_and_a_killed_worker_is_replaced(victim_path, files, keyfile, tmp_path):
    """serve --processes 2: two workers answer on one port from one SQLite state; a worker SIGKILLed under
    load is replaced, and no answer is lost or charged twice; SIGTERM stops the supervisor and every worker."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    keys = add_clients(url)
    port = free_port()
    env = {**os.environ, "SERVER_LOG": str(tmp_path / "server.log")}
    server = start_server([*serve_args(victim_path, files, url, port), "--processes", "2"], env=env)
    load = None
    try:
        await_serving(tmp_path / "server.log")  # a worker killed while it starts stops the server instead
        workers = await_workers(server.pid, 2)
        load = Load(port, keys)
        assert load.going.wait(60), "the load did not get going"
        os.kill(workers[0], signal.SIGKILL)
        second = await_workers(server.pid, 2, gone=[workers[0]])
        starting = next(p for p in second if p != workers[1])
        os.kill(starting, signal.SIGKILL)  # its replacement, as it starts
        replaced = await_workers(server.pid, 2, gone=[workers[0], starting])  # started once more, after a pause
        assert workers[1] in replaced
        load.join()
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
        assert not [p for p in replaced if Path(f"/proc/{p}").exists()], "a worker outlived its supervisor"
    finally:
        server.kill()
        server.wait()
        if load is not None:
            load.close()
    log = (tmp_path / "server.log").read_text()
    assert "2 processes x 2 threads" in log and "was killed by SIGKILL; starting it again" in log, log
    assert log.count("was killed by SIGKILL; starting it again") == 2 and "error:" not in log, log
    load.check_accounts(url)


def test_workers_die_with_their_supervisor_and_report_why_they_cannot_start(victim_path, files, keyfile, tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    port = free_port()
    env = {**os.environ, "SERVER_LOG": str(tmp_path / "server.log")}
    args = [*serve_args(victim_path, files, url, port), "--processes", "2"]
    server = start_server(args, env=env)
    try:
        await_serving(tmp_path / "server.log")
        workers = await_workers(server.pid, 2)
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        deadline = time.monotonic() + 30
        while [p for p in workers if Path(f"/proc/{p}").exists()] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in workers if Path(f"/proc/{p}").exists()], "a worker outlived its supervisor"
        time.sleep(1)  # a resource tracker left behind would complain about now
        assert "leaked" not in (tmp_path / "server.log").read_text(), "semaphores left to the resource tracker"
    finally:
        server.kill()
        server.wait()
    store = open_store(url)  # a state kept for other costs: each worker refuses it as it builds its service
    try:
        store.set_shared("ledger", json.dumps(["gap_cost"]))
    finally:
        store.close()
    r = run_cli("serve", *args, timeout=180)
    assert r.returncode == 2 and "error:" in r.stderr and "keeps accounts of the costs" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def ctrl_c(args: list, when) -> tuple:
    """`main.py serve ARGS` in a session of its own; once `when(process)` returns, SIGINT to its whole process
    group (a terminal's Ctrl-C). Returns (exit code, stdout, stderr, what `when` returned)."""
    server = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "serve", *map(str, args)], cwd=ROOT,
                              start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = when(server)
        os.killpg(server.pid, signal.SIGINT)
        out, err = server.communicate(timeout=60)
    finally:
        server.kill()
        server.wait()
    return server.returncode, out, err, seen


def test_ctrl_c_while_the_workers_start_stops_everything_cleanly(victim_path, files, keyfile, tmp_path):
    """SIGINT to the whole process group (a terminal's Ctrl-C) while the workers import and build: every
    process stops, the exit is clean and no traceback is printed (workers hold the signal until they
    have a group of their own)."""
    args = [*serve_args(victim_path, files, f"sqlite:///{tmp_path / 'state.db'}", free_port()), "--processes", "2"]
    # once both are spawned: importing, or building their services
    code, out, err, workers = ctrl_c(args, lambda server: await_workers(server.pid, 2))
    assert code == 0 and "server stopped" in out and "Traceback" not in err, (code, err)
    assert not [p for p in workers if Path(f"/proc/{p}").exists()], "a worker outlived its supervisor"


def test_ctrl_c_stops_a_single_process_server_as_a_stop(victim_path, files, keyfile, tmp_path):
    port = free_port()
    args = serve_args(victim_path, files, f"sqlite:///{tmp_path / 'state.db'}", port)
    code, out, err, _ = ctrl_c(args, lambda server: await_healthy(server, port))
    assert code == 0 and "server stopped" in out and "interrupted" not in err, (code, err)


def test_a_stopped_worker_is_killed_and_replaced_after_the_worker_timeout(victim_path, files, keyfile, tmp_path):
    """A worker stopped with SIGSTOP still holds its share of the socket, but its event loop no longer beats:
    after --worker_timeout the supervisor kills it, and it is started again like any worker that died."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    port = free_port()
    env = {**os.environ, "SERVER_LOG": str(tmp_path / "server.log")}
    server = start_server([*serve_args(victim_path, files, url, port), "--processes", "2", "--worker_timeout", "3"],
                          env=env)
    try:
        await_serving(tmp_path / "server.log")
        workers = await_workers(server.pid, 2)
        time.sleep(4)  # past the timeout: a worker that beats is left alone
        assert workers_of(server.pid) == workers and "has not answered" not in (tmp_path / "server.log").read_text()
        os.kill(workers[0], signal.SIGSTOP)
        replaced = await_workers(server.pid, 2, gone=[workers[0]], timeout_s=120)
        assert workers[1] in replaced
        await_healthy(server, port)
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
    finally:
        server.kill()
        server.wait()
    log = (tmp_path / "server.log").read_text()
    assert "serve worker 0 has not answered for" in log and "(stopped or hung); killing it" in log, log
    assert "serve worker 0 was killed by SIGKILL; starting it again" in log and "error:" not in log, log
