"""summarize: one table and one figure from a folder of extraction runs, priced against its standard run
(extraction.summary)."""
from __future__ import annotations

from pathlib import Path

import attacks
from common.io import atomic_write_csv, check_outputs, params_beside, write_params_beside
from extraction.summary import PRICED_LOG, mode_folders, plot, summarize_runs
from parameters import add_calibration
from pow.calibration import CalibrationConfig


def summarize(s, *, progress: bool = True) -> tuple:
    """The summarize command: RUNS/summary.csv (+ .params.json) and RUNS/accuracy_vs_time.png."""
    runs = Path(s.runs)
    baseline = Path(s.calibration) if s.calibration else runs / "standard" / "log.csv"
    table_path, figure = runs / "summary.csv", runs / "accuracy_vs_time.png"
    folders = mode_folders(runs, ["standard", *attacks.ATTACKS])
    priced = {f"the priced log of {m}": f / PRICED_LOG for m, f in folders.items()}
    check_outputs({"the table": table_path, "its settings record": params_beside(table_path), "the figure": figure,
                   **priced}, {"--calibration": baseline, **{f"the log of {m}": f / "log.csv" for m,
                                                             f in folders.items()}})
    table, logs, cal = summarize_runs(folders, baseline, config=CalibrationConfig.of(s.as_dict()),
                                      cost_measure=s.cost_measure)
    atomic_write_csv(table_path, table)
    write_params_beside(table_path, s.as_dict(), "summarize", calibrator=cal.describe(), baseline=str(baseline))
    plot(logs, figure, title=f"{runs.name}: accuracy against time")
    text = table.to_string(index=False, float_format=lambda v: f"{v:.2f}")
    return table, (f"calibration: {s.calibration_mode}, cost measure {s.cost_measure}, baseline {baseline}\n{text}\n"
                   f"written: {table_path}, {figure}, and MODE/{PRICED_LOG} beside each run")


def add_arguments(sub) -> None:
    p = sub.add_parser("summarize", help="one table and figure from a folder of runs (RUNS/MODE/log.csv), priced "
                                         "against its standard run")
    p.add_argument("--runs", required=True,
                   help="folder with one sub-folder per mode, as experiments/attacks/*.sh write")
    p.add_argument("--calibration", default=None, help="legitimate baseline (default: RUNS/standard/log.csv)")
    add_calibration(p)
