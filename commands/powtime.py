"""pow-time: price a run's log in proof-of-work seconds from a legitimate baseline; base/budget sweeps."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from common.errors import UserError
from common.io import atomic_write_csv, check_outputs, params_beside, write_params_beside
from parameters import POS_FLOAT, add_calibration, listed, number
from pow import calibration


def _floats(text, flag) -> list:
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError as exc:
        raise UserError(f"{flag} takes comma-separated numbers, got '{text}'") from exc


def priced(s, calibration_path, log_path, **overrides) -> tuple:
    """(log with PoW columns, calibrator) for the settings, with optional overrides (base, pow_budget)."""
    s = s.replace(**overrides) if overrides else s
    baseline = calibration.load_baseline(calibration_path, cost_measure=s.cost_measure)
    cal = calibration.create(calibration.CalibrationConfig.of(s.as_dict()), baseline)
    frame = calibration.read_cost_log(log_path, cost_measure=s.cost_measure)
    raw = pd.read_csv(log_path)
    out = calibration.add_pow_columns(frame, cal, cost="cost")
    raw["pow_time_s"], raw["total_time_s"] = out["pow_time_s"].to_numpy(), out["total_time_s"].to_numpy()
    if "query_time_s" not in raw.columns:
        raw["query_time_s"] = out["query_time_s"].to_numpy()
    return raw, cal


def priced_path(log) -> Path:
    """Where pow-time writes by default: beside the log, never over it (LOG.pow.csv)."""
    log = Path(log)
    return log.with_name(log.stem + ".pow.csv")


def pow_time(s) -> tuple:
    inputs = {"--log": s.log, "--calibration": s.calibration}
    if s.bases or s.budgets:
        check_outputs({"--out": s.out, "the settings record": params_beside(s.out) if s.out else None}, inputs)
        return sweep(s)
    target = Path(s.out) if s.out else priced_path(s.log)
    record = params_beside(target)
    check_outputs({"--out": target, "the settings record": record}, inputs)
    frame, cal = priced(s, s.calibration, s.log)
    atomic_write_csv(target, frame)
    # the settings that priced this log, beside it (the run's own params.json is left as it was)
    write_params_beside(target, s.as_dict(), "pow-time", calibrator=cal.describe())
    last = frame.iloc[-1]
    r = calibration.ratio(frame)
    text = (f"calibration: {cal.name} on {s.calibration} (cost column: {s.cost_measure})\n"
            f"queries: {int(last['queries'])}\ntime without PoW: {last['query_time_s']:.3f} s\n"
            f"time with PoW:    {last['total_time_s']:.3f} s\nratio: {r:.2f}x\nwritten to {target} "
            f"(settings: {record.name})")
    return {"ratio": r, "query_time_s": float(last["query_time_s"]),
            "total_time_s": float(last["total_time_s"])}, text


def sweep(s) -> tuple:
    """Ratio of the log for every (base, budget) pair: how the calibration's knobs move it."""
    bases = _floats(s.bases, "--bases") if s.bases else [s.base]
    budgets = _floats(s.budgets, "--budgets") if s.budgets else [s.pow_budget]
    rows = []
    for b in bases:
        for g in budgets:
            frame, _ = priced(s, s.calibration, s.log, base=b, pow_budget=g)
            rows.append({"base": b, "pow_budget": g, "ratio": calibration.ratio(frame)})
    table = pd.DataFrame(rows)
    if s.out:
        atomic_write_csv(s.out, table)
        write_params_beside(s.out, s.as_dict(), "pow-time")
    return table, f"ratio of {s.log} ({s.calibration_mode} calibration)\n" + table.to_string(index=False)


def add_arguments(sub) -> None:
    p = sub.add_parser("pow-time", help="fill pow_time_s / total_time_s of a run's log from a baseline")
    p.add_argument("--calibration", required=True, help="legitimate baseline CSV (log.csv or paper format)")
    p.add_argument("--log", required=True, help="the run's log.csv (or a paper-format CSV)")
    add_calibration(p)
    p.add_argument("--out", default=None,
                   help="where to write the log with PoW columns; never the --log itself (default: LOG.pow.csv "
                        "beside the log)")
    p.add_argument("--bases", default=None, type=listed(number(float, 1, lo_open=True), "base"),
                   help="comma-separated bases: print a ratio sweep instead")
    p.add_argument("--budgets", default=None, type=listed(POS_FLOAT, "budget"),
                   help="comma-separated pow budgets for the sweep (relative)")
