"""The server as users run it: `main.py serve` under uvicorn, the admin commands, the client, `query`,
`extract --server`, and a crash: SIGKILL mid-load, restart, and every answer accounted exactly once."""
from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

from data.registry import load_splits
from server.client import ApiClient
from server.store import open_store
from tests.conftest import run_cli
from tests.server_helpers import BASELINE, TIMING, free_port, start_server, state_url


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


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_sigkill_mid_load_loses_no_answer_and_charges_none_twice(victim_path, files, keyfile, tmp_path, kind):
    url = state_url(kind, tmp_path)
    store = open_store(url)
    keys = []
    try:
        from server.keys import hash_api_key, new_api_key
        for i in range(4):
            keys.append(new_api_key())
            store.add_user(f"c{i}", hash_api_key(keys[-1]), f"c{i}")
    finally:
        store.close()
    port = free_port()
    env = {**os.environ, "SERVER_LOG": str(tmp_path / "server.log")}
    args = serve_args(victim_path, files, url, port)
    server = start_server(args, env=env)
    images = load_splits("mnist-5k", "data").pool_x[:400].numpy()
    clients = [ApiClient(f"http://127.0.0.1:{port}", k, workers=1, retries=40) for k in keys]
    received = [0] * 4
    errors = []
    going = threading.Event()  # set once 40 answers have come back

    def load(i):
        try:
            for j in range(10):
                x = images[(40 * i + 4 * j) % 390:(40 * i + 4 * j) % 390 + 4 + j % 3]
                received[i] += len(clients[i].predict(x))
                if sum(received) >= 40:
                    going.set()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    try:
        for t in threads:
            t.start()
        assert going.wait(60), "the load did not get going"
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        killed_at = sum(received)
        server = start_server(args, env=env)
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert killed_at < sum(received), "the kill came after the load"
    finally:
        server.kill()
        server.wait()
        for c in clients:
            c.close()
    store = open_store(url)
    try:
        import hashlib
        for i, c in enumerate(clients):
            assert received[i] == c.queries == store.account(f"c{i}").queries, (i, received, c.queries)
            for text in c.answered:  # every spent challenge is still spent
                assert store.spent(hashlib.sha256(text.encode()).hexdigest()) is not None
        assert store.spent_count() == sum(len(c.answered) for c in clients) == 40
    finally:
        store.close()
