"""sybil: what each attack pays when it splits its queries over API keys and batch sizes, against what a
legitimate user pays under the same split.

1. Each mode's query stream is recorded once: the attack runs for real (run_extraction, with a tap on
   its queries) against the local victim; the victim's answers do not depend on how the queries are
   split, so neither does the stream. The legitimate user (standard) draws the pool at random, with
   replacement where --budget exceeds it. Streams are kept in --sybil_runs and reused by a rerun.
2. Each split (keys x batch size) replays a stream through the server's own PredictionService: the
   batches go round-robin over the keys, each one challenged, answered, priced after it is seen and
   settled in the store, with top-ups where it costs more than its challenge paid. In-process, the
   puzzles are trusted, not solved (their work is summed); with --server local, a real uvicorn server
   answers over HTTP and every challenge and top-up is solved, at a declared solve rate that keeps the
   puzzles small (their seconds are work / that rate).
A client's PoW seconds are the work it paid over the solve rate; its ratio is (answering time + PoW
seconds) / answering time over all its keys. The table's attacker_over_legit is the attacker's PoW per
query over the legitimate user's, under the same split.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from common.errors import UserError
from common.io import (atomic_savefig, atomic_torch_save, atomic_write_csv, check_outputs, safe_torch_load,
                       write_params_beside)

COLUMNS = ["mode", "keys", "batch", "queries", "answer_s", "pow_s", "ratio", "legit_ratio", "attacker_over_legit",
           "round_trips", "accuracy", "transport"]
SIM_RATE = 1e6  # in-process: the solve rate the work is priced at (any rate gives the same seconds)
HTTP_RATE = 2e4  # --server local: the declared solve rate; low, so that a 1,000x batch is a small puzzle
ROUND_BATCHES = 16  # batches between the attacks' training rounds while their streams are recorded


def sybil(s) -> tuple:
    modes = ["standard", *[m for m in str(s.modes or "copycat").split(",") if m and m != "standard"]]
    keys_list = sorted({int(v) for v in str(s.accounts).split(",")})
    batches = sorted({int(v) for v in str(s.batches).split(",")})
    out = Path(s.out or "results/sybil.csv")
    plot = out.with_suffix(".png")
    runs = Path(s.sybil_runs or out.parent / "sybil-runs")
    check_outputs({"--out": out, "the plot": plot}, {"--calibration": s.calibration, "--victim_path": s.victim_path})
    if s.server not in (None, "local"):
        raise UserError(f"--server {s.server}: sybil starts its own local server; pass --server local (or leave it "
                        f"out to split in-process)")
    splits = [(k, b) for k in keys_list for b in batches if k * b <= s.budget]
    if not splits:
        raise UserError(f"no split fits --budget {s.budget}: every split needs one full batch per key; raise "
                        f"--budget to at least {min(keys_list) * min(batches)}")
    from commands.serve import check_serve
    check_serve(s.replace(puzzle="sha256", log_costs=None))  # the pricing settings, before any run
    streams = {mode: record_stream(s, mode, runs) for mode in modes}
    rows = []
    with tempfile.TemporaryDirectory(prefix="sybil-") as tmp:
        replay = _Http(s, Path(tmp)) if s.server == "local" else InProcessReplay(s, Path(tmp))
        try:
            bar = tqdm(total=len(modes) * len(splits), unit="split", desc="sybil")
            for keys, batch in splits:
                paid = {}
                for mode in modes:
                    paid[mode] = replay.price(streams[mode]["x"], keys=keys, batch=batch, tag=f"{mode}-{keys}-{batch}")
                    bar.update(1)
                legit = paid["standard"]
                for mode in modes:
                    p = paid[mode]
                    rows.append({"mode": mode, "keys": keys, "batch": batch, "queries": p["queries"],
                                 "answer_s": p["answer_s"], "pow_s": p["pow_s"], "ratio": p["ratio"],
                                 "legit_ratio": legit["ratio"],
                                 "attacker_over_legit": (p["pow_s"] / p["queries"]) / (legit["pow_s"] / legit["queries"]),
                                 "round_trips": p["round_trips"], "accuracy": streams[mode]["accuracy"],
                                 "transport": "http" if s.server == "local" else "in-process"})
            bar.close()
        finally:
            replay.close()
    table = pd.DataFrame(rows, columns=COLUMNS)
    atomic_write_csv(out, table)
    write_params_beside(out, s.as_dict(), "sybil", pricing=replay.describe)
    _plot(table, plot, s)
    shown = table.pivot_table(index=["mode"], columns=["keys", "batch"], values="attacker_over_legit")
    text = (f"attacker's PoW per query over the legitimate user's, per split (keys, batch):\n"
            f"{shown.to_string(float_format=lambda v: f'{v:.1f}')}\n"
            f"legitimate user's time ratio: {table['legit_ratio'].min():.2f}x to {table['legit_ratio'].max():.2f}x\n"
            f"table: {out}\nplot: {plot}")
    return table, text


# -- the query streams ------------------------------------------------------------------------------
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
    import hashlib

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--victim_path {p} does not exist; train one with: python main.py train-victim")
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16]


def _legit_stream(s) -> torch.Tensor:
    from data.profiles import profile_stream
    from data.registry import load_splits

    splits = load_splits(s.dataset, s.data_dir)
    return profile_stream("standard", splits.pool_x, splits.pool_y, int(s.budget), seed=int(s.seed))


def _attack_stream(s, mode: str, runs: Path) -> tuple:
    import parameters
    from extraction.loop import run_extraction

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
        from commands.serve import build_service
        from pow.timing import PuzzlePricer
        from server.store import open_store

        self.tmp, self.count = tmp, 0
        settings = s.replace(puzzle="sha256", max_batch=256, rate=1e9, burst=10 ** 9, pow_subs=1, log_costs=None)
        store = open_store(f"sqlite:///{tmp / 'init.db'}", durable=False)
        try:
            self.service, _ = build_service(settings, store, b"s" * 32, check_solution=lambda ch, nonces: None,
                                            puzzle_pricer=PuzzlePricer("sha256", rate=SIM_RATE))
        finally:
            store.close()
        self.describe = self.service.pricer.describe()

    def price(self, x: torch.Tensor, *, keys: int, batch: int, tag: str) -> dict:
        from server import tensors
        from server.keys import hash_api_key
        from server.service import ApiError
        from server.store import open_store

        self.count += 1
        store = open_store(f"sqlite:///{self.tmp / f'split-{self.count}.db'}", durable=False)
        self.service.store = store
        try:
            users = []
            for i in range(keys):
                store.add_user(f"{tag}-{i}", hash_api_key(f"pk_{tag}_{i}"), f"{tag}-{i}")
                users.append(self.service.authenticate(f"pk_{tag}_{i}"))
            work, trips = 0.0, []
            for b, start in enumerate(range(0, len(x), batch)):
                part = x[start:start + batch].numpy()
                user = users[b % keys]
                ch = self.service.challenge(user, len(part))
                work += ch["work"]
                solution, trip = ch["challenge"] + "|0", 1
                try:
                    self.service.predict(user, solution, tensors.encode(part))
                except ApiError as exc:
                    due = exc.extra.get("topup")
                    while due is not None:
                        work += due["work"]
                        trip += 1
                        try:
                            self.service.topup(user, solution, due["challenge"] + "|0")
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


class _Http:
    """A real server (uvicorn in a thread, SQLite) on a free loopback port; one ApiClient per key, all
    sharing one solver, solve every challenge and top-up."""

    def __init__(self, s, tmp: Path):
        from commands.serve import body_limit, build_service
        from pow.solver import Solver
        from pow.timing import PuzzlePricer
        from server.app import ThreadedServer, create_app
        from server.store import open_store

        self.store = open_store(f"sqlite:///{tmp / 'http.db'}", durable=False)
        settings = s.replace(puzzle="sha256", max_batch=256, rate=1e9, burst=10 ** 9, pow_subs=1, log_costs=None)
        self.service, _ = build_service(settings, self.store, b"h" * 32,
                                        puzzle_pricer=PuzzlePricer("sha256", rate=HTTP_RATE))
        self.describe = {**self.service.pricer.describe(), "declared_solve_rate": HTTP_RATE}
        self.http = ThreadedServer(create_app(self.service, max_body_bytes=body_limit(self.service.item_shape, 256),
                                              threads=2))
        self.url = self.http.url
        self.solver = Solver(1).__enter__()
        self.count = 0

    def price(self, x: torch.Tensor, *, keys: int, batch: int, tag: str) -> dict:
        from server.client import ApiClient
        from server.keys import hash_api_key, new_api_key

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


def _plot(table: pd.DataFrame, path: Path, s) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted(table["batch"].unique())
    fig, axes = plt.subplots(1, len(batches), figsize=(3.2 * len(batches), 3.4), sharey=True, squeeze=False)
    for ax, batch in zip(axes[0], batches):
        part = table[table["batch"] == batch]
        for mode, rows in part.groupby("mode", sort=False):
            ax.plot(rows["keys"], rows["ratio"], "-o" if mode != "standard" else ":", label=mode, markersize=3)
        ax.axhline(2.0, color="grey", lw=0.6)
        ax.set(xscale="log", yscale="log", xlabel="API keys", title=f"batch {batch}")
    axes[0][0].set_ylabel("time with PoW / without")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"Split over keys and batch sizes, {s.dataset}, {s.budget} queries", fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)

