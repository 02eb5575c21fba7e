"""sybil: what an attacker saves by splitting copycat's queries over n API keys, and what grouping keys
into one account (an organisation, a network range) takes back.

Every batch goes through the server's own PredictionService: a challenge priced from the key's
account by the calibrator, then the batch answered, accounted and committed, exactly as over HTTP
(challenges are issued at work 1 and solved at once; their calibrated seconds are summed instead).
A client's ratio is (answering time + PoW seconds) / answering time, over all of its keys.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import UserError
from common.io import atomic_savefig, atomic_write_csv, check_outputs, write_params_beside

COLUMNS = ["accounts", "grouped", "standard_ratio", "copycat_ratio", "copycat_over_standard"]


def _client_ratio(service, images, *, accounts: int, grouped: bool, batch: int, store_url: str) -> float:
    from pow.solver import Solver
    from server import tensors
    from server.keys import hash_api_key
    from server.store import open_store

    store = open_store(store_url)
    service.store = store
    try:
        users = []
        for i in range(accounts):
            key = f"pk_sybil{i}"
            store.add_user(f"s{i}", hash_api_key(key), "org" if grouped else f"s{i}")
            users.append(service.authenticate(key))
        pow_s = 0.0
        with Solver(1) as solver:
            for b, start in enumerate(range(0, len(images), batch)):
                x = images[start:start + batch]
                user = users[b % accounts]
                ch = service.challenge(user, len(x))
                pow_s += ch["expected_seconds"]
                service.predict(user, solver.solve_target(ch["challenge"])[0], tensors.encode(x))
        answer_s = sum(store.account(a).answer_s for a in {u.account for u in users})
        return 1.0 + pow_s / answer_s
    finally:
        store.close()


def sybil(s) -> tuple:
    import torch

    from commands.serve import build_service
    from data.ood import ood_pool
    from data.registry import load_splits
    from pow.timing import PuzzlePricer
    from server.store import open_store

    counts = sorted({int(v) for v in str(s.accounts).split(",")})
    out = Path(s.out or "results/sybil.csv")
    plot = out.with_suffix(".png")
    check_outputs({"--out": out, "the plot": plot}, {"--calibration": s.calibration, "--victim_path": s.victim_path})
    if s.budget < s.query_batch * max(counts):
        raise UserError(f"--budget {s.budget} gives fewer batches of {s.query_batch} than {max(counts)} accounts; "
                        f"raise --budget to at least {s.query_batch * max(counts)}")
    splits = load_splits(s.dataset, s.data_dir)
    generator = torch.Generator().manual_seed(s.seed)
    standard = splits.pool_x[torch.randperm(len(splits.pool_x), generator=generator)[:s.budget]].numpy()
    copycat = ood_pool(s.ood_pool, s.budget, splits.spec, seed=s.seed, data_dir=s.data_dir).numpy()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sybil-") as tmp:
        work = Path(tmp)
        settings = s.replace(puzzle="sha256", max_batch=s.query_batch, rate=1e9, burst=10 ** 6)
        first = open_store(f"sqlite:///{work / 'init.db'}")
        service, _ = build_service(settings, first, b"s" * 32)
        first.close()
        service.pricer = PuzzlePricer("sha256", rate=1e-9)  # work 1: the seconds are summed, not solved
        for grouped in (False, True):
            for n in counts:
                ratios = {mode: _client_ratio(service, images, accounts=n, grouped=grouped, batch=s.query_batch,
                                              store_url=f"sqlite:///{work / f'{mode}-{n}-{int(grouped)}.db'}")
                          for mode, images in (("standard", standard), ("copycat", copycat))}
                rows.append({"accounts": n, "grouped": grouped, "standard_ratio": ratios["standard"],
                             "copycat_ratio": ratios["copycat"],
                             "copycat_over_standard": ratios["copycat"] / ratios["standard"]})
    table = pd.DataFrame(rows, columns=COLUMNS)
    atomic_write_csv(out, table)
    write_params_beside(out, s.as_dict(), "sybil")
    _plot(table, plot, s)
    return table, f"{table.to_string(index=False, float_format=lambda v: f'{v:.2f}')}\ntable: {out}\nplot: {plot}"


def _plot(table: pd.DataFrame, path: Path, s) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for grouped, style in ((False, "-o"), (True, "--s")):
        part = table[table["grouped"] == grouped]
        label = "keys grouped as one account" if grouped else "one account per key"
        ax.plot(part["accounts"], part["copycat_ratio"], style, label=f"copycat, {label}")
    part = table[~table["grouped"]]
    ax.plot(part["accounts"], part["standard_ratio"], ":", color="grey", label="standard (legitimate)")
    ax.set(xscale="log", yscale="log", xlabel="API keys the attacker holds", ylabel="time with PoW / without",
           title=f"Sybils on {s.dataset}, {s.budget} queries")
    ax.set_xticks(table["accounts"].unique(), [str(v) for v in table["accounts"].unique()])
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)
