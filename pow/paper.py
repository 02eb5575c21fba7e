"""The paper's released result CSVs: reading them, and what they say about how fast cost grows.

model_extraction_attack_accuracy_D.csv logs each attack mode step by step (time, accuracy, batches added,
cumulative privacy cost); time_privacy_cost_D.csv logs a legitimate user. `growth_claims` computes, per
mode, how much faster its privacy cost grows than the legitimate user's, read three ways: per query, per
second of querying, and at equal stolen accuracy (the most an attack paid, over what `standard` paid, to
first reach the same accuracy).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import UserError
from common.io import read_csv_file
from pow import calibration

PAPER_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "paper"  # the authors' CSVs (small)

BATCHES_PER_STEP = 16  # the paper's CSVs: 16 batches of 64 are counted as 1,000 queries
ATTACK_COLUMNS = {"time (sec)": "time", "time": "time", "mode": "mode", "accuracy": "accuracy",
                  "diff queries": "diff", "privacy cost": "cost", "privacy": "cost"}


def read_attacks(path) -> pd.DataFrame:
    """The paper's attack CSV as time / mode / accuracy / diff / cost / queries (cumulative per mode)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"attack CSV {path} does not exist")
    frame = read_csv_file(path, "attack CSV").rename(columns=ATTACK_COLUMNS)
    need = {"time", "mode", "accuracy", "diff", "cost"}
    if not need <= set(frame.columns):
        raise UserError(f"{path} has columns {list(frame.columns)}; expected the paper's "
                        f"'time (sec),mode,accuracy,diff queries,privacy cost'")
    if frame.empty:
        raise UserError(f"attack CSV {path} has a header but no rows")
    numeric = frame[["time", "accuracy", "diff", "cost"]].apply(pd.to_numeric, errors="coerce")
    if not np.isfinite(numeric.to_numpy(float)).all():
        raise UserError(f"attack CSV {path}: time, accuracy, diff queries and privacy cost must be finite numbers "
                        f"in every row")
    if (numeric[["time", "diff", "cost"]] < 0).any().any():
        raise UserError(f"attack CSV {path}: time, diff queries and privacy cost must be non-negative")
    frame[numeric.columns] = numeric
    last_time = frame.groupby("mode", sort=False)["time"].last()
    if (last_time <= 0).any():
        raise UserError(f"attack CSV {path}: mode(s) {', '.join(map(str, last_time[last_time <= 0].index))} end "
                        f"with a time of 0 s; the ratio of times needs a positive time")
    frame["queries"] = frame.groupby("mode", sort=False)["diff"].cumsum() * calibration.STEP_QUERIES / BATCHES_PER_STEP
    return frame



def growth_claims(time_csv, attacks_csv) -> pd.DataFrame:
    """Per attack mode: final accuracy, queries, cost per query, and its cost growth over the legitimate
    user's per query, per second, and at equal accuracy (with the accuracy where that peaks)."""
    legit = calibration.load_baseline(time_csv, cost_measure="knn")
    frame = read_attacks(attacks_csv)
    per_query = float(legit.cost[-1] / legit.queries[-1])
    per_second = float(legit.cost[-1] / legit.time_s[-1])
    standard = frame[frame["mode"] == "standard"]
    rows = []
    for mode, g in frame.groupby("mode", sort=False):
        last = g.iloc[-1]
        row = {"mode": mode, "accuracy": float(last["accuracy"]), "queries": int(last["queries"]),
               "cost_per_query": float(last["cost"] / last["queries"]) if last["queries"] > 0 else float("nan")}
        row["growth_per_query"] = row["cost_per_query"] / per_query
        row["growth_per_second"] = float(last["cost"] / last["time"]) / per_second
        row["growth_equal_accuracy"], row["at_accuracy"] = _equal_accuracy(g, standard)
        rows.append(row)
    return pd.DataFrame(rows)


def _equal_accuracy(g: pd.DataFrame, standard: pd.DataFrame) -> tuple:
    """The largest ratio of this mode's cumulative cost to standard's at the first rows where each reaches
    the same accuracy (over the accuracies both reach, above the untrained 10%), and that accuracy."""
    if standard.empty:
        return float("nan"), float("nan")
    best = (float("nan"), float("nan"))
    reached = min(g["accuracy"].max(), standard["accuracy"].max())
    for level in np.unique(g["accuracy"][(g["accuracy"] > 10) & (g["accuracy"] <= reached)]):
        ours = g.loc[g["accuracy"] >= level, "cost"].iloc[0]
        base = standard.loc[standard["accuracy"] >= level, "cost"].iloc[0]
        if base > 0 and not ours / base <= best[0]:
            best = (float(ours / base), float(level))
    return best


def price(frame: pd.DataFrame, cal) -> pd.DataFrame:
    """Per mode, the cumulative PoW time of each row."""
    parts = []
    for _, g in frame.groupby("mode", sort=False):
        g = g.rename(columns={"time": "query_time_s"})
        priced = calibration.add_pow_columns(g, cal, cost="cost")
        parts.append(priced)
    return pd.concat(parts)


def pow_table(calibration_csv, attacks_csv, *, base: float, min_s: float, max_s: float) -> tuple:
    """(summary table, priced rows with both calibrations) for one dataset: each attack mode of the
    paper's CSV priced by the paper's calibration (base, clip [min_s, max_s] s per 1,000 queries) on
    its legitimate user's CSV, two-sided and one-sided."""
    baseline = calibration.load_baseline(calibration_csv, cost_measure="knn")
    two = calibration.PaperCalibrator(baseline, base=base, min_s=min_s, max_s=max_s)
    one = calibration.PaperCalibrator(baseline, base=base, min_s=min_s, max_s=max_s, one_sided=True)
    frame = read_attacks(attacks_csv)
    paper, sided = price(frame, two), price(frame, one)
    paper["total_time_one_sided_s"] = sided["total_time_s"].to_numpy()
    rows = []
    for mode, g in paper.groupby("mode", sort=False):
        last = g.iloc[-1]
        dev = two.deviation(g["queries"], g["cost"])
        clipped = int(((dev * math.log(two.base) > math.log(two.max_s)) & (g["diff"] > 0)).sum())
        rows.append({"mode": mode, "final_accuracy": last["accuracy"], "best_accuracy": g["accuracy"].max(),
                     "queries": int(last["queries"]), "privacy_cost": last["cost"],
                     "time_no_pow_s": last["query_time_s"], "time_pow_s": last["total_time_s"],
                     "ratio": last["total_time_s"] / last["query_time_s"],
                     "time_pow_one_sided_s": last["total_time_one_sided_s"],
                     "ratio_one_sided": last["total_time_one_sided_s"] / last["query_time_s"],
                     "steps_at_max": clipped})
    return pd.DataFrame(rows), paper
