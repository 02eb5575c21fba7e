"""demo: the paper's central experiment on mnist-5k, end to end, on a CPU, in a few minutes."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from common.io import atomic_savefig, atomic_write_csv, ensure_writable_dir, write_params_json
from commands.victim import train_victim
from common.errors import UserError
from data.registry import create as create_spec
from extraction.loop import run_extraction
from models.checkpoint import load_victim
from pow import calibration
from privacy.accountants import cost_column

DEMO_MODES = ("standard", "copycat")
PRICED_LOG = "log_pow.csv"  # each run's log with the demo's PoW columns, beside the run's log.csv


def _usable_victim(s) -> bool:
    """True when --victim_path holds a victim for this dataset (and architecture); False when there is no
    file there yet, so one may be trained. Any other file at that path is the user's: a UserError says
    why it does not fit, and nothing is overwritten."""
    if not Path(s.victim_path).exists():
        return False
    load_victim(s.victim_path, create_spec(s.dataset), architecture=s.victim_arch)
    return True


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
    out = ensure_writable_dir(Path(s.out_dir), "--out_dir")
    if Path(s.victim_path).resolve().is_relative_to(out.resolve()):
        raise UserError(f"--victim_path {s.victim_path} lies inside --out_dir {out}, every file of which the demo "
                        f"writes; keep the victim elsewhere (default: checkpoints/)")
    lines = []
    if _usable_victim(s):
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
        frame = pd.read_csv(out / mode / "log.csv")
        frame = calibration.add_pow_columns(frame, cal, cost=cost_column(s.cost_measure))
        atomic_write_csv(out / mode / PRICED_LOG, frame)  # the run's own log.csv stays as the run wrote it
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
    lines.append(f"results: {out}/summary.csv, {out}/accuracy_vs_time.png, and per mode "
                 f"{out}/{{{','.join(DEMO_MODES)}}}/log.csv (the run) and {PRICED_LOG} (priced)")
    return table, "\n".join(lines)
