"""Query streams and their replay, shared by sybil and frontier (a service of theirs, not a command).

record_stream runs an attack for real against the local victim (run_extraction, with a tap on its
queries) and keeps the queries it sent, in order; the legitimate user's stream is a random draw of the
pool. InProcessReplay prices a stream under one split (keys x batch size) through the server's own
PredictionService, with the puzzles trusted; HttpReplay does the same through a real uvicorn server,
solving every challenge and top-up.
"""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import torch

import parameters
from common.errors import UserError
from common.io import atomic_torch_save, safe_torch_load
from data.profiles import profile_stream
from data.registry import load_splits
from extraction.loop import run_extraction
from pow.solver import Solver
from pow.timing import PuzzlePricer
from server import tensors
from server.app import ThreadedServer, create_app
from server.build import DeploymentConfig, body_limit, build_service
from server.client import ApiClient
from server.keys import hash_api_key, new_api_key
from server.service import ApiError
from server.store import open_store

SIM_RATE = 1e6  # in-process: the solve rate the work is priced at (any rate gives the same seconds)
HTTP_RATE = 2e4  # --server local: the declared solve rate; low, so that a 1,000x batch is a small puzzle
ROUND_BATCHES = 16  # batches between the attacks' training rounds while their streams are recorded
REPLAY_SERVICE = {"puzzle": "sha256", "max_batch": 256, "rate": 1e9, "burst": 10 ** 9, "pow_subs": 1,
                  "log_costs": None}  # a replay's service: no rate limit, one sub-solution, the priced measure only


def record_stream(s, mode: str, runs: Path) -> dict:
    """{"x": uint8 queries in the order sent, "accuracy": the attack's stolen accuracy} for `mode`."""
    key = {"mode": mode, "dataset": s.dataset, "budget": int(s.budget), "seed": int(s.seed),
           "ood_pool": s.ood_pool, "sampling": s.sampling, "stolen_epochs": s.stolen_epochs,
           "victim": _victim_id(s.victim_path)}
    path = runs / f"{s.dataset}-{mode}-{s.budget}-seed{s.seed}.stream.pt"
    if path.is_file():
        blob = safe_torch_load(path, "a recorded query stream", "delete it to record it again")
        if isinstance(blob, dict) and blob.get("key") == key and isinstance(blob.get("x"), torch.Tensor):
            return {"x": blob["x"], "accuracy": float(blob["accuracy"])}
    if mode == "standard":
        x, accuracy = _legit_stream(s), float("nan")
    else:
        x, accuracy = _attack_stream(s, mode, runs)
    runs.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"key": key, "x": x, "accuracy": accuracy}, path)
    return {"x": x, "accuracy": accuracy}


def _victim_id(path) -> str:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--victim_path {p} does not exist; train one with: python main.py train-victim")
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16]


def _legit_stream(s) -> torch.Tensor:
    splits = load_splits(s.dataset, s.data_dir)
    return profile_stream("standard", splits.pool_x, splits.pool_y, int(s.budget), seed=int(s.seed))


def _attack_stream(s, mode: str, runs: Path) -> tuple:
    recorded = []

    def tap(x):
        recorded.append(x.detach().cpu())

    with tempfile.TemporaryDirectory(prefix=f"sybil-{mode}-") as tmp:
        argv = ["extract", "--mode", mode, "--dataset", s.dataset, "--data_dir", s.data_dir, "--seed", str(s.seed),
                "--victim_path", s.victim_path, "--budget", str(s.budget), "--ood_pool", s.ood_pool,
                "--sampling", s.sampling, "--batches_per_round", str(ROUND_BATCHES), "--out_dir", tmp,
                "--device", s.device]
        if s.stolen_epochs is not None:
            argv += ["--stolen_epochs", str(s.stolen_epochs)]
        settings = parameters.parse(argv)
        result = run_extraction(settings, tap=tap)
    x = torch.cat(recorded)
    if x.is_floating_point():  # dfme's generated images: the wire carries uint8
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return x[:s.budget], float(result["final"]["accuracy"])


# -- replaying a stream under one split ---------------------------------------------------------------
class InProcessReplay:
    """Each split on a fresh SQLite store (no fsync), through PredictionService; puzzles are trusted."""

    def __init__(self, s, tmp: Path):
        self.tmp, self.count = tmp, 0
        settings = DeploymentConfig.of(s.as_dict(), **REPLAY_SERVICE)
        store = open_store(f"sqlite:///{tmp / 'init.db'}", durable=False)
        try:
            self.service, _ = build_service(settings, store, b"s" * 32, check_solution=lambda ch, nonces: None,
                                            puzzle_pricer=PuzzlePricer("sha256", rate=SIM_RATE))
        finally:
            store.close()
        self.describe = self.service.pricer.describe()

    def price(self, x: torch.Tensor, *, keys: int, batch: int, tag: str) -> dict:
        self.count += 1
        store = open_store(f"sqlite:///{self.tmp / f'split-{self.count}.db'}", durable=False)
        service = self.service.on_store(store)
        try:
            users = []
            for i in range(keys):
                store.add_user(f"{tag}-{i}", hash_api_key(f"pk_{tag}_{i}"), f"{tag}-{i}")
                users.append(service.authenticate(f"pk_{tag}_{i}"))
            work, trips = 0.0, []
            for b, start in enumerate(range(0, len(x), batch)):
                part = x[start:start + batch].numpy()
                user = users[b % keys]
                ch = service.challenge(user, len(part))
                work += ch["work"]
                solution, trip = ch["challenge"] + "|0", 1
                try:
                    service.predict(user, solution, tensors.encode(part))
                except ApiError as exc:
                    due = exc.extra.get("topup")
                    while due is not None:
                        work += due["work"]
                        trip += 1
                        try:
                            service.topup(user, solution, due["challenge"] + "|0")
                            due = None
                        except ApiError as again:
                            if again.status != 402:
                                raise
                            due = again.extra["topup"]
                    if exc.status != 402:
                        raise
                trips.append(trip)
            answer_s = sum(store.account(u.account).answer_s for u in users)
            pow_s = work / SIM_RATE
            return {"queries": len(x), "answer_s": answer_s, "pow_s": pow_s, "ratio": 1.0 + pow_s / answer_s,
                    "round_trips": float(np.mean(trips))}
        finally:
            store.close()

    def close(self) -> None:
        pass


class HttpReplay:
    """A real server (uvicorn in a thread, SQLite) on a free loopback port; one ApiClient per key, all
    sharing one solver, solve every challenge and top-up."""

    def __init__(self, s, tmp: Path):
        self.store = open_store(f"sqlite:///{tmp / 'http.db'}", durable=False)
        settings = DeploymentConfig.of(s.as_dict(), **REPLAY_SERVICE)
        self.service, _ = build_service(settings, self.store, b"h" * 32,
                                        puzzle_pricer=PuzzlePricer("sha256", rate=HTTP_RATE))
        self.describe = {**self.service.pricer.describe(), "declared_solve_rate": HTTP_RATE}
        self.http = ThreadedServer(create_app(self.service, max_body_bytes=body_limit(self.service.item_shape, 256),
                                              threads=2))
        self.url = self.http.url
        self.solver = Solver(1).__enter__()
        self.count = 0

    def price(self, x: torch.Tensor, *, keys: int, batch: int, tag: str) -> dict:
        self.count += 1
        clients = []
        try:
            for i in range(keys):
                key = new_api_key()
                self.store.add_user(f"h{self.count}-{i}", hash_api_key(key), f"h{self.count}-{i}")
                clients.append(ApiClient(self.url, key, solver=self.solver))
            for b, start in enumerate(range(0, len(x), batch)):
                client = clients[b % keys]
                client.max_batch = batch
                client.predict(x[start:start + batch].numpy())
            answer_s = sum(self.store.account(f"h{self.count}-{i}").answer_s for i in range(keys))
            pow_s = sum(c.work for c in clients) / HTTP_RATE
            trips = [t for c in clients for t in c.round_trips]
            return {"queries": len(x), "answer_s": answer_s, "pow_s": pow_s, "ratio": 1.0 + pow_s / answer_s,
                    "round_trips": float(np.mean(trips))}
        finally:
            for c in clients:
                c.close()

    def close(self) -> None:
        try:
            self.http.close()
        finally:
            self.solver.__exit__(None, None, None)
            self.store.close()


