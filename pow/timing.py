"""From calibrated seconds to puzzle difficulty, and from difficulty to expected work and time.

The calibrators (calibration.py) output seconds of PoW. A PuzzlePricer turns them into a difficulty:
  hashcash  the bit count whose mean solve time in the timing table is nearest in log space
            (geometric rounding: t is rounded to bits b when t lies between the geometric means
            of b's time and its neighbours'); expected work 2^bits;
  sha256 / scrypt  exact: work W = seconds x rate (evaluations per second), a real number.
A solver is modelled as time = overhead_s + work / rate (process hand-offs, the last block's overshoot
and verification make up the overhead). The model comes from pow-calibrate's CSV (a least-squares
line through mean time against expected work), from the paper's hashcash table, or 'live': real
puzzles of two sizes solved at start (solver.profile_solver).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common import checks
from common.errors import UserError, unknown_name
from common.io import read_csv_file
from pow import kinds

PUZZLES = kinds.NAMES
TABLES = ("live", "measured", "paper")
PAPER_HASHCASH_SECONDS = kinds.PAPER_HASHCASH_SECONDS
TIMING_COLUMNS = ["puzzle", "solver", "workers", "difficulty", "expected_work", "trials", "mean_tries",
                  "mean_s", "median_s", "p90_s", "rate"]


class PuzzlePricer:
    """Maps PoW seconds to a difficulty, and a difficulty to expected work and seconds, for one puzzle kind
    (kinds.py) and one solver model: time = overhead_s + work / rate, or a table of seconds per level."""

    def __init__(self, puzzle: str, *, rate: float, overhead_s: float = 0.0, bits_seconds: dict | None = None,
                 source: str = "live"):
        self.kind = kinds.get(puzzle)
        rate = checks.finite("the solve rate", rate, lo=0, lo_open=True)
        overhead_s = checks.finite("the solver overhead", overhead_s, lo=0)
        self.puzzle, self.rate, self.overhead_s, self.source = puzzle, float(rate), float(overhead_s), source
        if bits_seconds is None:
            bits_seconds = self.kind.model_levels(self.rate, self.overhead_s)
        self.bits_seconds = dict(sorted(bits_seconds.items())) if bits_seconds else None

    def difficulty(self, seconds: float) -> float:
        """Bits (hashcash) or expected work W (target puzzles) for a PoW time.

        A time that is not a finite number >= 0 is an error, never the easiest puzzle: a NaN from a
        broken baseline must not switch the defence off."""
        return self.kind.difficulty(checks.finite("PoW seconds", seconds, lo=0), self)

    def work(self, difficulty: float) -> float:
        return self.kind.work(difficulty)

    def expected_seconds(self, difficulty: float) -> float:
        return self.kind.expected_seconds(difficulty, self)

    def describe(self) -> dict:
        return {"puzzle": self.puzzle, "rate": self.rate, "overhead_s": self.overhead_s, "table": self.source}


def read_timing_csv(path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise UserError(f"timing table {path} does not exist; create it with: python main.py pow-calibrate "
                        f"--out {path} (or use --timing_table live or paper)")
    frame = read_csv_file(path, "timing table")
    missing = set(TIMING_COLUMNS) - set(frame.columns)
    if missing:
        raise UserError(f"timing table {path} lacks columns {sorted(missing)}; recreate it with pow-calibrate")
    numbers = frame[["workers", "difficulty", "expected_work", "mean_s", "rate"]].apply(pd.to_numeric, errors="coerce")
    if frame.empty or not np.isfinite(numbers.to_numpy(float)).all() or (numbers[["mean_s", "rate"]] <= 0).any().any():
        raise UserError(f"timing table {path} has no rows, or non-numeric, infinite or non-positive times or "
                        f"rates; recreate it with pow-calibrate")
    frame[numbers.columns] = numbers
    return frame


def make_pricer(puzzle: str, *, table: str, solver: str = "python", workers: int = 1, timing_csv=None,
                measure=None) -> PuzzlePricer:
    """The pricer for --puzzle/--timing_table; `measure(kind, workers)` gives a live (overhead_s, rate) for a
    kinds.Puzzle."""
    kind = kinds.get(puzzle)
    if table not in TABLES:
        raise unknown_name("timing table", table, TABLES)
    if table == "paper":
        if kind.paper_seconds is None:
            measured = [p.name for p in kinds.REGISTRY.values() if p.paper_seconds]
            raise UserError(f"the paper's timing table is for {', '.join(measured)} only; use --puzzle "
                            f"{' or '.join(measured)}, or --timing_table live or measured")
        rate = float(np.median([kind.work(b) / t for b, t in kind.paper_seconds.items() if b >= 16]))
        return PuzzlePricer(puzzle, rate=rate, bits_seconds=kind.paper_seconds, source="paper")
    if table == "measured":
        frame = read_timing_csv(timing_csv)
        rows = frame[(frame["puzzle"] == puzzle) & (frame["solver"] == solver)]
        if rows.empty:
            raise UserError(f"timing table {timing_csv} has no rows for puzzle {puzzle} with solver {solver}; "
                            f"rerun pow-calibrate with --puzzles {puzzle} --solver {solver}")
        slope, intercept = np.polyfit(rows["expected_work"].to_numpy(float), rows["mean_s"].to_numpy(float), 1)
        rate = 1.0 / slope if slope > 0 else float(rows["rate"].median())
        return PuzzlePricer(puzzle, rate=rate, overhead_s=max(0.0, float(intercept)),
                            bits_seconds=kind.measured_levels(rows["difficulty"], rows["mean_s"]),
                            source=f"measured ({timing_csv})")
    native = kind.native_rate(workers) if solver == "native" else None
    overhead, rate = (0.0, native) if native is not None else measure(kind, workers)
    return PuzzlePricer(puzzle, rate=rate, overhead_s=overhead, source=f"live ({solver}, {workers} workers)")
