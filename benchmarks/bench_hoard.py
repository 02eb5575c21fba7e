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

ROOT = Path(__file__).resolve().parent.parent

HOARD, BATCH, THREADS = 20, 64, 8
RATE = 2e4  # the declared solve rate: puzzles stay small, their seconds are work / RATE


def replica(s, state: str, key: bytes):
    from pow.timing import PuzzlePricer
    from server.app import ThreadedServer, create_app
    from server.build import DeploymentConfig, body_limit, build_service
    from server.store import open_store

    store = open_store(state)
    service, _ = build_service(DeploymentConfig.of(s.as_dict()), store, key, puzzle_pricer=PuzzlePricer("sha256",
                                                                                                        rate=RATE))
    app = create_app(service, max_body_bytes=body_limit(service.item_shape, 256), threads=THREADS)
    http = ThreadedServer(app)
    return {"url": http.url, "http": http, "service": service, "store": store}


def run(replicas: int, tmp: Path, s) -> dict:
    import httpx
    import numpy as np

    from pow.puzzles import token_of
    from pow.solver import Solver
    from server import tensors
    from server.keys import hash_api_key, new_api_key
    from server.store import open_store

    state = f"sqlite:///{tmp / f'hoard-{replicas}.db'}"
    nodes = [replica(s, state, b"r" * 32) for _ in range(replicas)]
    admin = open_store(state)
    key = new_api_key()
    admin.add_user("hoarder", hash_api_key(key), "hoarder")
    headers = {"X-API-Key": key}
    rng = np.random.default_rng(0)
    from data.registry import load_splits
    legit = load_splits(s.dataset, s.data_dir).pool_x[:BATCH].numpy()
    try:
        with Solver(1) as solver, httpx.Client(headers=headers, timeout=120) as http:
            def challenge(node):
                return http.post(f"{node['url']}/v1/challenge", json={"batch": BATCH}).json()

            def pay(node, x):
                ch = challenge(node)
                sol = solver.solve_target(ch["challenge"])[0]
                r = http.post(f"{node['url']}/v1/predict", json={"solution": sol, "inputs": tensors.encode(x)})
                while r.status_code == 402:
                    due = r.json()["topup"]
                    r = http.post(f"{node['url']}/v1/topup", json={
                        "solution": sol, "topup": solver.solve_target(due["challenge"])[0]})
                return r

            assert pay(nodes[0], legit).status_code == 200
            hoard = []
            for i in range(HOARD):
                ch = challenge(nodes[i % replicas])
                hoard.append((solver.solve_target(ch["challenge"])[0], ch["work"]))
            before = admin.account("hoarder")
            noise = [rng.integers(0, 256, size=(BATCH, 1, 28, 28), dtype=np.uint8) for _ in range(HOARD)]
            replies, barrier = [None] * HOARD, threading.Barrier(HOARD)

            def send(i):
                barrier.wait()
                replies[i] = http.post(f"{nodes[i % replicas]['url']}/v1/predict",
                                       json={"solution": hoard[i][0], "inputs": tensors.encode(noise[i])})

            threads = [threading.Thread(target=send, args=(i,)) for i in range(HOARD)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            codes = [r.status_code for r in replies]
            direct = admin.account("hoarder")
            sealed = [i for i, r in enumerate(replies) if r.status_code == 402]
            unpaid_answer_s = sum(admin.sealed(token_of(hoard[i][0].rsplit("|", 1)[0])).sealed["answer_s"]
                                  for i in sealed)
            unpaid_pow_s = sum(hoard[i][1] for i in sealed) / RATE
            topups = 0.0
            for i in sealed:  # now pay them, one by one (each at the price current at its own commit)
                r = replies[i]
                while r.status_code == 402:
                    due = r.json()["topup"]
                    topups += due["work"]
                    r = http.post(f"{nodes[i % replicas]['url']}/v1/topup", json={
                        "solution": hoard[i][0], "topup": solver.solve_target(due["challenge"])[0]})
                assert r.status_code == 200, r.text
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
    import parameters
    from tests.server_helpers import BASELINE

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "baseline.csv").write_text(BASELINE)
        s = parameters.parse(["serve", "--calibration", str(tmp / "baseline.csv"), "--puzzle", "sha256",
                              "--device", "cpu", "--rate", "100000", "--burst", "100000"])
        results = [run(n, tmp, s) for n in (1, 2)]
    out = ROOT / "benchmarks" / "results" / "hoard.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
