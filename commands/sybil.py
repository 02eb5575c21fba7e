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

import pandas as pd
from tqdm.auto import tqdm

from attacks import ATTACKS
from attacks.knockoff import SAMPLINGS
from commands.streams import HttpReplay, InProcessReplay, record_stream
from common.errors import UserError
from common.io import atomic_savefig, atomic_write_csv, check_outputs, write_params_beside
from parameters import (
    NONNEG_INT,
    POS_INT,
    add_accountant,
    add_calibration,
    add_common,
    add_split_price,
    add_victim,
    default_text,
    listed,
    number,
    one_of,
    pool_arg,
    preset_text,
)
from server.build import DeploymentConfig, check_serve

COLUMNS = ["mode", "keys", "batch", "queries", "answer_s", "pow_s", "ratio", "legit_ratio", "attacker_over_legit",
           "round_trips", "accuracy", "transport"]


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
    check_serve(DeploymentConfig.of(s.as_dict(), puzzle="sha256",
                                    log_costs=None))  # the pricing settings, before any run
    streams = {mode: record_stream(s, mode, runs) for mode in modes}
    rows = []
    with tempfile.TemporaryDirectory(prefix="sybil-") as tmp:
        replay = HttpReplay(s, Path(tmp)) if s.server == "local" else InProcessReplay(s, Path(tmp))
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
                                 "attacker_over_legit": (p["pow_s"] / p["queries"])
                                 / (legit["pow_s"] / legit["queries"]),
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


def add_arguments(sub) -> None:
    p = sub.add_parser("sybil", help="what each attack pays split over API keys and batch sizes, against a "
                                     "legitimate user (in-process, or over HTTP)")
    add_common(p)
    add_victim(p)
    add_accountant(p)
    add_calibration(p)
    add_split_price(p)
    p.add_argument("--calibration", required=True, help="a legitimate user's log.csv (a standard run's)")
    p.add_argument("--modes", default=None, type=listed(one_of(ATTACKS, "mode"), "mode"),
                   help="comma-separated attack modes whose query streams are split (default: copycat; the "
                        "legitimate user, standard, is always measured)")
    p.add_argument("--budget", type=POS_INT, default=None,
                   help=f"queries of each client in all {default_text('budget')}")
    p.add_argument("--accounts", default=None, type=listed(number(int, 1, 4096), "count"),
                   help="comma-separated numbers of API keys (default: 1,16,256,1024)")
    p.add_argument("--batches", default=None, type=listed(number(int, 1, 256), "batch size"),
                   help="comma-separated batch sizes (default: 1,16,64,256)")
    p.add_argument("--ood_pool", default=None, type=pool_arg,
                   help=f"copycat's and knockoff's images {default_text('ood_pool')}")
    p.add_argument("--sampling", default=None, choices=SAMPLINGS,
                   help=f"knockoff: random or adaptive {default_text('sampling')}")
    p.add_argument("--stolen_epochs", type=NONNEG_INT, default=None,
                   help=preset_text("stolen_epochs") + "; the attacks' own copies train as they query")
    p.add_argument("--server", default=None,
                   help="split over HTTP: start a local server (uvicorn, SQLite) and query it with real puzzles "
                        "(value: 'local'); default: in-process, through the same PredictionService")
    p.add_argument("--sybil_runs", default=None,
                   help="folder of the attacks' runs whose query streams are split (kept, so a rerun reuses "
                        "them) (default: OUT's folder/sybil-runs)")
    p.add_argument("--out", default=None, help="CSV of the table (default: results/sybil.csv; plot beside it)")
