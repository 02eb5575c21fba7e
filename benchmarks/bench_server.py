"""Load on the prediction server over loopback: 8 concurrent clients, batches of 64, the small CNN.

Five stages (and /v1/predict once more for each other --processes count: default 1,2), each the same
count of requests (bounded in number and time), run side by side ROUNDS times over; each figure is the
median of its rounds:
  inference   the victim's forward pass, called from 8 client threads through a pool sized as the
              server's (--threads workers x cores/threads torch threads each);
  http        + FastAPI/uvicorn: the batch travels as JSON/base64 (encoded as the client encodes it:
              MNIST's 8-bit pixels as uint8), is decoded and answered;
  verify      + the API key, the challenge's signature, owner, expiry, spent set and solution
              (pre-solved minimal challenges: solving is excluded);
  account     + the accountant (the priced measure) and the commit to SQLite: the real /v1/predict;
  noop        the same bodies to a route that parses them and answers nothing: the HTTP layer's own cost.
Prints requests/s, p50/p99 latency, the CPU each request took (server and clients) and the cores kept busy
per stage, /v1/predict's share of bare inference's requests/s (the median of the rounds' ratios; target
75%) beside its CPU ceiling (the share if both kept every core busy), its p99 over p50 (target 3), and the
accountant's share.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client as httplib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
from fastapi import Header

from benchmarks.results_io import write_result
from data.registry import load_splits
from main import parse as parse_command_line
from models.checkpoint import load_victim
from models.oracle import Victim
from parameters import DEFAULTS
from pow import puzzles
from pow.solver import Solver
from pow.timing import PuzzlePricer
from server import tensors
from server.app import create_app
from server.build import DeploymentConfig, body_limit, build_service, size_threads
from server.keys import hash_api_key
from server.service import ApiError
from server.serving import Built, serve_socket
from server.store import open_store
from tests.server_helpers import BASELINE, TIMING, free_port

ROOT = Path(__file__).resolve().parent.parent

CLIENTS, BATCH, REQUESTS, ROUNDS = 8, 64, 30, 5  # requests per client per stage and round
TIME_CAP_S = 120.0  # per stage


def build(victim_path: str, state: str, threads: int, processes: int = 1):
    """The real service with minimal (work 1) challenges, plus two stripped-down routes for the stages."""
    baseline = Path(tempfile.mkdtemp()) / "baseline.csv"
    baseline.write_text(BASELINE)
    s = parse_command_line(["serve", "--calibration", str(baseline), "--victim_path", victim_path, "--puzzle", "sha256",
                          "--device", "cpu", "--state", state, "--rate", "100000", "--burst", "100000",
                          "--timing_table", "measured", "--timing_csv", str(_timing(baseline.parent))])
    store = open_store(state)
    # every challenge: work 1, and every price below it (solving excluded; verification included)
    service, describe = build_service(DeploymentConfig.of(s.as_dict()), store, b"b" * 32,
                                      puzzle_pricer=PuzzlePricer("sha256", rate=1e-9))
    threads, _ = size_threads(threads, processes)
    app = create_app(service, max_body_bytes=body_limit(service.item_shape, 256), threads=threads)


    @app.post("/bench/http")
    def bare_http(payload: dict):
        x = tensors.decode(payload["inputs"], item_shape=service.item_shape, max_batch=256)
        logp = service.victim.log_probs(torch.from_numpy(x.copy()))
        return {"answers": service.victim.answer(logp).tolist()}

    @app.post("/bench/noop")
    def noop(payload: dict):
        return {"answers": []}

    @app.post("/bench/verify")
    def verify_only(payload: dict, x_api_key: str | None = Header(None)):
        user = service.authenticate(x_api_key)
        text, nonces = puzzles.split_solution(payload["solution"])
        ch = puzzles.parse(text)
        if not ch.signed_by(service.key) or ch.resource != user.name or service.clock() > ch.expires:
            raise ApiError(403, "bench", "refused")
        if service.store.spent(hashlib.sha256(text.encode()).hexdigest()) is not None or ch.unsolved(nonces):
            raise ApiError(409, "bench", "refused")
        service.quote(service.store.account(user.account), ch.batch)
        x = tensors.decode(payload["inputs"], item_shape=service.item_shape, max_batch=ch.batch)
        logp = service.victim.log_probs(torch.from_numpy(x.copy()))
        return {"answers": service.victim.answer(logp).tolist()}

    @app.get("/bench/timings")
    def timings():
        return list(service.timings)
    return app, service


def _timing(folder: Path) -> Path:
    path = folder / "timing.csv"
    path.write_text(TIMING)
    return path


@dataclass(frozen=True)
class BenchRecipe:
    """build()'s app for each server process (picklable: --processes starts them with spawn)."""
    victim_path: str
    state: str
    threads: int
    processes: int

    def __call__(self):
        app, service = build(self.victim_path, self.state, self.threads, self.processes)
        return Built(app, service.store.close)


def serve(args, processes: int) -> None:
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", args.port))
        sock.listen(2048)
        serve_socket(sock, BenchRecipe(args.victim_path, args.state, args.threads, processes), processes=processes,
                     worker_timeout_s=DEFAULTS["worker_timeout"])
    finally:
        sock.close()


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def cpu_s(pid: int | None = None, *, system: bool = False) -> float:
    """CPU seconds (user + system, or system alone; all threads) used so far by process `pid` (default: this
    one)."""
    if pid is None:
        t = os.times()
        return t.system + (0.0 if system else t.user)
    fields = _stat(pid)
    return (int(fields[12]) + (0 if system else int(fields[11]))) / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list:
    """/proc/PID/stat's fields after the command's name (field 3, the state, comes first)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by process `pid` and its live children (the server's workers)."""
    total = cpu_s(pid)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    total += cpu_s(int(entry.name))
            except (OSError, IndexError, ValueError):  # a process that ended meanwhile
                continue
    return total


def stage(name, call, *, server_pid=None, clients=CLIENTS, requests=REQUESTS) -> dict:
    """`clients` threads each make `requests` calls; requests/s, latency percentiles, and the CPU each
    request took in the server's process and in the clients' (this process)."""
    latencies, lock = [], threading.Lock()
    stop = time.perf_counter() + TIME_CAP_S

    def client(i):
        for j in range(requests):
            if time.perf_counter() > stop:
                return
            start = time.perf_counter()
            call(i, j)
            with lock:
                latencies.append(time.perf_counter() - start)

    pid = server_pid or os.getpid()
    cpu = (tree_cpu_s(server_pid) if server_pid else 0.0, cpu_s(), cpu_s(pid, system=True))
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    server_cpu = (tree_cpu_s(server_pid) - cpu[0]) if server_pid else 0.0
    n = len(latencies)
    return {"stage": name, "requests": n, "requests_per_s": n / wall,
            "p50_ms": 1000 * percentile(latencies, 50), "p99_ms": 1000 * percentile(latencies, 99),
            "server_cpu_ms": 1000 * server_cpu / n, "client_cpu_ms": 1000 * (cpu_s() - cpu[1]) / n,
            "model_process_system_ms": 1000 * (cpu_s(pid, system=True) - cpu[2]) / n}


def start(args, work: Path, keys: list, processes: int):
    """The server (`processes` of them on one port) in a subprocess on a fresh SQLite state with one user
    per key; (process, url, log)."""
    work.mkdir(parents=True)
    state = f"sqlite:///{work / 'state.db'}"
    store = open_store(state)
    try:
        for i, k in enumerate(keys):
            store.add_user(f"bench{i}", hash_api_key(k), f"bench{i}")
    finally:
        store.close()
    port = free_port()
    log = open(work / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_server", "--serve", "--port", str(port),
                               "--state", state, "--victim_path", args.victim_path, "--threads", str(args.threads),
                               "--processes", str(processes)],
                              stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return server, url, log
        except httpx.TransportError:
            time.sleep(0.1)
    server.kill()
    log.close()
    raise RuntimeError(f"the benchmark's server did not start; see {work / 'server.log'}")


def bare_inference(victim_path: str, x, threads: int):
    """Stage 1's call: the victim's answer to batch x, from a pool sized like the server's."""
    spec = load_splits("mnist-5k", "data").spec
    victim = Victim(load_victim(victim_path, spec, device=torch.device("cpu"))[0], device=torch.device("cpu"))
    pool = ThreadPoolExecutor(threads)
    batch = torch.from_numpy(x.copy())

    def call(i, j):
        with torch.no_grad():
            return pool.submit(lambda: victim.answer(victim.log_probs(batch))).result()
    return call, pool


class Clients:
    """One keep-alive http.client connection per client (lighter than httpx, which would otherwise spend
    the cores the server shares), and pre-solved minimal challenges for each."""

    def __init__(self, url: str, keys: list):
        self.httplib, self.keys = httplib, keys
        port = int(url.rsplit(":", 1)[1])
        self.conns = [httplib.HTTPConnection("127.0.0.1", port, timeout=60) for _ in keys]
        self.http = [httpx.Client(base_url=url, headers={"X-API-Key": k}, timeout=60) for k in keys]

    def post(self, i: int, path: str, body: bytes) -> None:
        conn, headers = self.conns[i], {"content-type": "application/json", "x-api-key": self.keys[i]}
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
        except ConnectionError:  # idle past the server's keep-alive (while bodies were made): reopen
            conn.close()
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {data[:300]}")

    def bodies(self, i: int, n: int, inputs: dict) -> list:
        """n request bodies for client i, each with a fresh solved challenge (solving is not timed)."""
        out = []
        with Solver(1) as solver:
            for _ in range(n):
                ch = self.http[i].post("/v1/challenge", json={"batch": BATCH}).json()["challenge"]
                out.append(json.dumps({"solution": solver.solve_target(ch)[0], "inputs": inputs}).encode())
        return out

    def close(self) -> None:
        for c in self.http + self.conns:
            c.close()


def run_rounds(servers: list, inference, inputs: dict) -> list:
    """The stages side by side, ROUNDS times over: the machine's drift hits each alike. `servers` holds
    (Clients, server pid, processes); the first gets every stage, each other one /v1/predict."""
    warm = json.dumps({"inputs": inputs}).encode()
    for clients, _, _ in servers:
        for _ in range(16):  # untimed: the first requests pay for lazy imports and connection set-up
            clients.post(0, "/bench/http", warm)
    plan = [(servers[0], name, path) for name, path in (
        ("http", "/bench/http"), ("verify", "/bench/verify"), ("account", "/v1/predict"), ("noop", "/bench/noop"))]
    plan += [(server, f"account, {server[2]} processes", "/v1/predict") for server in servers[1:]]
    rounds = []
    for _ in range(ROUNDS):
        row = [stage("inference", inference)]
        for (clients, pid, _), name, path in plan:
            # bodies made before the clock starts: the clients share these 2 cores with the server
            bodies = [clients.bodies(i, REQUESTS + 1, inputs) for i in range(CLIENTS)]
            for i in range(CLIENTS):  # untimed: each route's first call per client (lazy set-up, new account)
                clients.post(i, path, bodies[i][REQUESTS])
            row.append(stage(name, lambda i, j: clients.post(i, path, bodies[i][j]), server_pid=pid))
        rounds.append(row)
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--state", default=None)
    parser.add_argument("--victim_path", default=str(ROOT / "checkpoints" / "mnist-5k-victim.pt"))
    parser.add_argument("--threads", type=int, default=0, help="request threads (default: the server's)")
    parser.add_argument("--processes", default="1,2",
                        help="comma-separated server process counts, measured side by side; the first gets every "
                             "stage, the others /v1/predict (with --serve: this server's count)")
    args = parser.parse_args()
    counts = [int(n) for n in args.processes.split(",")]
    if args.serve:
        return serve(args, counts[0])


    if not Path(args.victim_path).exists():  # the default recipe: the demo and the grid reuse this checkpoint
        subprocess.run([sys.executable, str(ROOT / "main.py"), "train-victim", "--victim_path", args.victim_path,
                        "--device", "cpu"], check=True)
    keys = [f"pk_bench{i}" for i in range(CLIENTS)]
    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    started, servers, pool = [], [], None
    try:
        for n in counts:
            started.append(start(args, work / f"{n}-processes", keys, n))
        x = load_splits("mnist-5k", "data").pool_x[:BATCH].numpy()
        inputs = tensors.encode(x)
        threads, per = size_threads(args.threads, counts[0])
        # bare inference with the server's parallelism: a thread per route of every process
        inference, pool = bare_inference(args.victim_path, x, threads * counts[0])
        servers = [(Clients(url, keys), process.pid, n) for (process, url, _), n in zip(started, counts)]
        rounds = run_rounds(servers, inference, inputs)
        timings = servers[0][0].http[0].get("/bench/timings").json()
    finally:
        for clients, _, _ in servers:
            clients.close()
        if pool is not None:
            pool.shutdown()
        for process, _, log in started:
            process.terminate()  # the supervisor stops its workers
            process.wait()
            log.close()
    write_result("server_load", {**summary(rounds, timings, inputs["dtype"], threads, per),
                                 "server_processes": counts})


def summary(rounds: list, timings: list, wire_dtype: str, threads: int, per: int) -> dict:
    """Per stage, the median of its rounds; /v1/predict against bare inference; the server's own timings."""
    results = [{"stage": r[0]["stage"], "requests": sum(x["requests"] for x in r),
                **{k: statistics.median(x[k] for x in r)
                   for k in ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_ms", "client_cpu_ms",
                             "model_process_system_ms")},
                "cores_busy": statistics.median(x["requests_per_s"] * (x["server_cpu_ms"] + x["client_cpu_ms"]) / 1000
                                                for x in r)}
               for r in zip(*rounds)]
    ratios = [r[3]["requests_per_s"] / r[0]["requests_per_s"] for r in rounds]
    by_processes = {rounds[0][k]["stage"]: statistics.median(r[k]["requests_per_s"] / r[0]["requests_per_s"]
                                                             for r in rounds)
                    for k in range(5, len(rounds[0]))}  # stage 5 on: /v1/predict of the other process counts

    def ms(key, q=50):
        return 1000 * percentile([t[key] for t in timings], q)
    return {"clients": CLIENTS, "batch": BATCH, "wire_dtype": wire_dtype, "rounds": ROUNDS,
            "requests_per_stage": CLIENTS * REQUESTS, "server_threads": threads, "torch_threads_each": per,
            "cores": os.cpu_count(), "stages": results,
            "predict_share_of_inference": statistics.median(ratios),
            "predict_share_of_inference_rounds": ratios,
            "predict_share_target": 0.75,
            # the share if both stages kept every core busy: bare inference's CPU per request over /v1/predict's
            # (server and clients), the clients sharing the cores
            "predict_share_cpu_ceiling": statistics.median(
                r[0]["client_cpu_ms"] / (r[3]["server_cpu_ms"] + r[3]["client_cpu_ms"]) for r in rounds),
            "predict_share_other_process_counts": by_processes,
            "http_verify_overhead": 1 - results[2]["requests_per_s"] / results[0]["requests_per_s"],
            "http_verify_overhead_target": 0.20,
            "predict_p99_over_p50": results[3]["p99_ms"] / results[3]["p50_ms"],
            "predict_p99_over_p50_target": 3.0,
            "accountant_ms_per_batch": {"p50": ms("accountant_s"), "p99": ms("accountant_s", 99)},
            "inference_ms_per_batch_in_server": ms("inference_s"), "inference_ms_p99": ms("inference_s", 99),
            "commit_ms_per_batch": ms("commit_s"), "commit_ms_p99": ms("commit_s", 99),
            "checks_ms_p99": ms("checks_s", 99),
            "predict_ms_p50": ms("total_s"), "predict_ms_p99": ms("total_s", 99),
            "accountant_share_of_batch": statistics.median(
                t["accountant_s"] / (t["inference_s"] + t["accountant_s"] + t["commit_s"]) for t in timings)}


if __name__ == "__main__":
    main()
