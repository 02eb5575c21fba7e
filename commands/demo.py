"""demo: the paper's central experiment on mnist-5k, end to end, on a CPU, in a few minutes."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from common.io import atomic_savefig, atomic_write_csv, write_params_json
from commands.victim import train_victim
from extraction.loop import run_extraction
from pow import calibration
from privacy.accountants import cost_column

DEMO_MODES = ("standard", "copycat")


def _victim_ok(s) -> bool:
    meta = Path(str(s.victim_path) + ".json")
    if not (Path(s.victim_path).exists() and meta.exists()):
        return False
    info = json.loads(meta.read_text())
    return info.get("dataset") == s.dataset and (s.victim_arch is None or info.get("architecture") == s.victim_arch)


def plot(logs: dict, path) -> None:
    """Accuracy against time, with and without PoW, one line pair per mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"standard": "tab:blue", "copycat": "tab:red"}
    for mode, frame in logs.items():
        c = colors.get(mode)
        ax.plot(frame["query_time_s"], frame["accuracy"], "--o", color=c, ms=3, label=f"{mode} without PoW")
        ax.plot(frame["total_time_s"], frame["accuracy"], "-o", color=c, ms=3, label=f"{mode} with PoW")
    ax.set_xscale("log")
    ax.set_xlabel("time (s, log scale)")
    ax.set_ylabel("stolen model accuracy (%)")
    ax.set_title("Model extraction with calibrated proof-of-work")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    atomic_savefig(fig, path)
    plt.close(fig)


def demo(s, *, progress: bool = True) -> tuple:
    out = Path(s.out_dir)
    lines = []
    if _victim_ok(s):
        lines.append(f"reusing victim {s.victim_path}")
    else:
        _, report = train_victim(s, progress=progress)
        lines.append(report)
    logs = {}
    for mode in DEMO_MODES:
        run = s.replace(mode=mode, out_dir=str(out / mode), calibration=None)
        run_extraction(run, progress=progress)
    baseline = out / "standard" / "log.csv"
    rows = []
    cal = calibration.create(s.calibration_mode, calibration.load_baseline(baseline, cost_measure=s.cost_measure), s)
    for mode in DEMO_MODES:
        log_path = out / mode / "log.csv"
        frame = pd.read_csv(log_path)
        frame = calibration.add_pow_columns(frame, cal, cost=cost_column(s.cost_measure))
        atomic_write_csv(log_path, frame)
        logs[mode] = frame
        last = frame.iloc[-1]
        rows.append({"mode": mode, "accuracy": last["accuracy"], "fidelity": last["fidelity"],
                     "queries": int(last["queries"]), "privacy_cost": last["privacy_cost"],
                     s.cost_measure + "_measure": last[cost_column(s.cost_measure)],
                     "time_no_pow_s": last["query_time_s"], "time_pow_s": last["total_time_s"],
                     "ratio": calibration.ratio(frame)})
    table = pd.DataFrame(rows)
    atomic_write_csv(out / "summary.csv", table)
    plot(logs, out / "accuracy_vs_time.png")
    write_params_json(out, {**s.as_dict(), "calibrator": cal.describe()}, "demo")
    lines.append(f"calibration: {s.calibration_mode}, cost measure {s.cost_measure}, baseline {baseline}")
    lines.append(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    lines.append(f"results: {out}/summary.csv, {out}/accuracy_vs_time.png, {out}/MODE/log.csv")
    return table, "\n".join(lines)
