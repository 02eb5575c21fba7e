"""What a hoarded challenge still buys, and what unpaid batches cost the server (issue 14, items 1 and 5).

A real server (uvicorn, 8 request threads) on one SQLite state, or two replicas on it. One user buys a
legitimate batch, hoards 20 challenges for batches of 64 at that price, then sends 20 costly batches
(uniform noise) with them at once, from 20 threads, half to each replica. Every 200 or 402 is recorded;
each 402's top-up is then paid. Reported: how many were answered without a top-up, the work paid against
the work priced at commit (the share), and, for the sealed batches never paid, the server's answering
time against the client's PoW seconds.

    python3 -m benchmarks.bench_hoard   (writes benchmarks/results/hoard.json)
"""
from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

import httpx
import numpy as np

from data.registry import load_splits
from main import parse as parse_command_line
from pow.puzzles import token_of
from pow.solver import Solver
from pow.timing import PuzzlePricer
from server import tensors
from server.app import ThreadedServer, create_app
from server.build import DeploymentConfig, body_limit, build_service
from server.keys import hash_api_key, new_api_key
from server.store import open_store
from tests.server_helpers import BASELINE

ROOT = Path(__file__).resolve().parent.parent

HOARD, BATCH, THREADS = 20, 64, 8
RATE = 2e4  # the declared solve rate: puzzles stay small, their seconds are work / RATE


def replica(s, state: str, key: bytes):
    store = open_store(state)
    service, _ = build_service(DeploymentConfig.of(s.as_dict()), store, key, puzzle_pricer=PuzzlePricer("sha256",
                                                                                                        rate=RATE))
    app = create_app(service, max_body_bytes=body_limit(service.item_shape, 256), threads=THREADS)
    http = ThreadedServer(app)
    return {"url": http.url, "http": http, "service": service, "store": store}


class Hoarder:
    """One user's HTTP client and solver against the replicas (request i goes to replica i mod their count):
    it buys batches, hoards challenges, sends batches all at once, and pays their top-ups."""

    def __init__(self, http, solver, nodes: list):
        self.http, self.solver, self.nodes = http, solver, nodes

    def url(self, i: int) -> str:
        return self.nodes[i % len(self.nodes)]["url"]

    def challenge(self, i: int = 0) -> dict:
        return self.http.post(f"{self.url(i)}/v1/challenge", json={"batch": BATCH}).json()

    def topped_up(self, i: int, reply, solution: str) -> tuple:
        """(the 200 reply, the top-ups' work) once every 402 has been paid, each at its own commit's price."""
        work = 0.0
        while reply.status_code == 402:
            due = reply.json()["topup"]
            work += due["work"]
            reply = self.http.post(f"{self.url(i)}/v1/topup", json={
                "solution": solution, "topup": self.solver.solve_target(due["challenge"])[0]})
        return reply, work

    def pay(self, x) -> object:
        solution = self.solver.solve_target(self.challenge()["challenge"])[0]
        reply = self.http.post(f"{self.url(0)}/v1/predict", json={"solution": solution, "inputs": tensors.encode(x)})
        return self.topped_up(0, reply, solution)[0]

    def race(self, hoard: list, batches: list) -> list:
        """Send every hoarded solution with its batch at once, from one thread each; their replies."""
        replies, barrier = [None] * len(hoard), threading.Barrier(len(hoard))

        def send(i):
            barrier.wait()
            replies[i] = self.http.post(f"{self.url(i)}/v1/predict",
                                        json={"solution": hoard[i][0], "inputs": tensors.encode(batches[i])})

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(hoard))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return replies


def run(replicas: int, tmp: Path, s) -> dict:
    state = f"sqlite:///{tmp / f'hoard-{replicas}.db'}"
    nodes = [replica(s, state, b"r" * 32) for _ in range(replicas)]
    admin = open_store(state)
    key = new_api_key()
    admin.add_user("hoarder", hash_api_key(key), "hoarder")
    legit = load_splits(s.dataset, s.data_dir).pool_x[:BATCH].numpy()
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, size=(BATCH, 1, 28, 28), dtype=np.uint8) for _ in range(HOARD)]
    try:
        with Solver(1) as solver, httpx.Client(headers={"X-API-Key": key}, timeout=120) as http:
            user = Hoarder(http, solver, nodes)
            assert user.pay(legit).status_code == 200
            hoard = [(solver.solve_target(ch["challenge"])[0], ch["work"])
                     for ch in (user.challenge(i) for i in range(HOARD))]
            before = admin.account("hoarder")
            replies = user.race(hoard, noise)
            codes = [r.status_code for r in replies]
            direct = admin.account("hoarder")
            sealed = [i for i, r in enumerate(replies) if r.status_code == 402]
            unpaid_answer_s = sum(admin.sealed(token_of(hoard[i][0].rsplit("|", 1)[0])).sealed["answer_s"]
                                  for i in sealed)
            unpaid_pow_s = sum(hoard[i][1] for i in sealed) / RATE
            topups = 0.0
            for i in sealed:  # now pay them, one by one (each at the price current at its own commit)
                reply, work = user.topped_up(i, replies[i], hoard[i][0])
                assert reply.status_code == 200, reply.text
                topups += work
            after = admin.account("hoarder")
    finally:
        admin.close()
        for node in nodes:
            node["http"].close()
            node["store"].close()
    hoarded = sum(w for _, w in hoard)
    priced = after.priced - before.priced
    return {"replicas": replicas, "threads": THREADS, "hoarded": HOARD, "answered_without_topup": codes.count(200),
            "sealed": codes.count(402), "other": [c for c in codes if c not in (200, 402)],
            "priced_work_direct": direct.priced - before.priced,
            "hoarded_work": hoarded, "topup_work": topups, "priced_work": priced,
            "credit_before": before.credit, "credit_after": after.credit,
            "paid_share_of_price": (hoarded + topups) / priced,  # the rest: credit before, debt after
            "unpaid_server_answer_s": unpaid_answer_s, "unpaid_client_pow_s": unpaid_pow_s,
            "client_pow_per_server_s": unpaid_pow_s / unpaid_answer_s if unpaid_answer_s else None}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "baseline.csv").write_text(BASELINE)
        s = parse_command_line(["serve", "--calibration", str(tmp / "baseline.csv"), "--puzzle", "sha256",
                              "--device", "cpu", "--rate", "100000", "--burst", "100000"])
        results = [run(n, tmp, s) for n in (1, 2)]
    out = ROOT / "benchmarks" / "results" / "hoard.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
