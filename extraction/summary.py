"""Summarising extraction runs: one table and one figure from a folder of runs, priced against its standard run.

The folder holds one sub-folder per mode (RUNS/MODE/log.csv, as experiments/attacks/*.sh write them).
Every log is priced offline with the same calibrator, built on the baseline (RUNS/standard/log.csv by
default), so all modes pay by one rule; each priced log goes beside its run as MODE/log_pow.csv, and the
run's own log.csv is never changed. The summarize command, the demo and the grid's report use it.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from common.errors import UserError
from common.io import atomic_savefig, atomic_write_csv, read_csv_file
from pow import calibration
from privacy.accountants import COST_COLUMNS, cost_column

PRICED_LOG = "log_pow.csv"  # each run's log with PoW columns, beside the run's log.csv


def plot(logs: dict, path, title: str = "Model extraction with calibrated proof-of-work") -> None:
    """Accuracy against time, without PoW (dashed) and with PoW (solid), one colour per mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    cmap = plt.get_cmap("tab20")
    for i, (mode, frame) in enumerate(logs.items()):
        c = cmap(i % 20)
        ax.plot(frame["query_time_s"], frame["accuracy"], "--", color=c, lw=1, alpha=0.7)
        ax.plot(frame["total_time_s"], frame["accuracy"], "-o", color=c, ms=3, label=mode)
    ax.set_xscale("log")
    ax.set_xlabel("time (s, log scale): dashed without PoW, solid with PoW")
    ax.set_ylabel("stolen model accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    atomic_savefig(fig, path)
    plt.close(fig)


def mode_folders(runs: Path, order) -> dict:
    """{mode: folder} for every sub-folder holding a log.csv; the registry's order, then the rest by name."""
    found = {p.name: p for p in sorted(runs.iterdir()) if (p / "log.csv").is_file()} if runs.is_dir() else {}
    if not found:
        raise UserError(f"{runs} holds no runs (no MODE/log.csv inside); run experiments/attacks/*.sh first, "
                        f"or pass the folder they wrote")
    ranked = [m for m in order if m in found] + [m for m in found if m not in order]
    return {m: found[m] for m in ranked}


def summarize_runs(folders: dict, baseline, *, config: calibration.CalibrationConfig, cost_measure: str) -> tuple:
    """(table, {mode: priced log}, calibrator) with PoW priced by the calibrator `config` builds on
    `baseline`, from each log's `cost_measure` column; writes each MODE/log_pow.csv."""
    cost = cost_column(cost_measure)
    cal = calibration.create(config, calibration.load_baseline(baseline, cost_measure=cost_measure))
    rows, logs = [], {}
    for mode, folder in folders.items():
        path = folder / "log.csv"
        calibration.read_cost_log(path, cost_measure=cost_measure)  # queries, time and cost: checked
        frame = read_csv_file(path, "run log")
        for column in ("accuracy", "fidelity"):
            values = pd.to_numeric(frame[column], errors="coerce") if column in frame else None
            if values is None or values.isna().any() or not values.between(0, 100).all():
                raise UserError(f"{path}: {column} must be a percentage in [0, 100] on every row; rerun that mode")
        frame = calibration.add_pow_columns(frame, cal, cost=cost)
        logs[mode] = frame
        last = frame.iloc[-1]
        rows.append({"mode": mode, "queries": int(last["queries"]), "accuracy": last["accuracy"],
                     "fidelity": last["fidelity"],
                     **{c: last[c] for c in COST_COLUMNS if c in frame and pd.notna(last[c])},
                     "time_no_pow_s": last["query_time_s"], "time_pow_s": last["total_time_s"],
                     "ratio": calibration.ratio(frame)})
    for mode, frame in logs.items():  # only once every log priced: a bad one leaves no file behind
        atomic_write_csv(folders[mode] / PRICED_LOG, frame)
    return pd.DataFrame(rows), logs, cal


