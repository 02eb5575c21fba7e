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

import math
from pathlib import Path

import numpy as np
import pandas as pd

from common import checks
from common.errors import UserError, unknown_name
from common.io import read_csv_file
from pow.puzzles import MAX_WORK as MAX_TARGET_WORK

PUZZLES = ("hashcash", "sha256", "scrypt")
TABLES = ("live", "measured", "paper")
#: the paper's measured mean SHA-1 hashcash solve time (Python solver), seconds, for bits 1..32
PAPER_HASHCASH_SECONDS = {
    1: 0.000018, 2: 0.000046, 3: 0.00005, 4: 0.000056, 5: 0.000181, 6: 0.000315, 7: 0.000325, 8: 0.000704,
    9: 0.001079, 10: 0.003480, 11: 0.007472, 12: 0.008756, 13: 0.018955, 14: 0.049600, 15: 0.065657,
    16: 0.239012, 17: 0.489723, 18: 0.549378, 19: 1.474332, 20: 2.927822, 21: 4.340743, 22: 8.519815,
    23: 15.106678, 24: 23.196483, 25: 151.251428, 26: 245.364584, 27: 565.612546, 28: 666.044603,
    29: 1069.022753, 30: 1533.945173, 31: 2832.509785, 32: 2948.467908,
}
HASH_KIND = {"hashcash": "sha1", "sha256": "sha256", "scrypt": "scrypt"}  # function each puzzle evaluates
TIMING_COLUMNS = ["puzzle", "solver", "workers", "difficulty", "expected_work", "trials", "mean_tries",
                  "mean_s", "median_s", "p90_s", "rate"]


class PuzzlePricer:
    """Maps PoW seconds to a difficulty, and a difficulty to expected work and seconds."""

    def __init__(self, puzzle: str, *, rate: float, overhead_s: float = 0.0, bits_seconds: dict | None = None,
                 source: str = "live"):
        if puzzle not in PUZZLES:
            raise unknown_name("puzzle", puzzle, PUZZLES)
        rate = checks.finite("the solve rate", rate, lo=0, lo_open=True)
        overhead_s = checks.finite("the solver overhead", overhead_s, lo=0)
        self.puzzle, self.rate, self.overhead_s, self.source = puzzle, float(rate), float(overhead_s), source
        if puzzle == "hashcash" and bits_seconds is None:
            bits_seconds = {b: overhead_s + 2.0 ** b / rate for b in range(1, 41)}
        self.bits_seconds = dict(sorted(bits_seconds.items())) if bits_seconds else None

    def difficulty(self, seconds: float) -> float:
        """Bits (hashcash) or expected work W (target puzzles) for a PoW time.

        A time that is not a finite number >= 0 is an error, never the easiest puzzle: a NaN from a
        broken baseline must not switch the defence off."""
        seconds = checks.finite("PoW seconds", seconds, lo=0)
        if self.puzzle == "hashcash":
            bits = np.array(list(self.bits_seconds))
            times = np.array(list(self.bits_seconds.values()))
            return int(bits[np.argmin(np.abs(np.log(times) - math.log(max(seconds, 1e-12))))])
        return min(max(1.0, (seconds - self.overhead_s) * self.rate), MAX_TARGET_WORK)

    def work(self, difficulty: float) -> float:
        return 2.0 ** difficulty if self.puzzle == "hashcash" else float(difficulty)

    def expected_seconds(self, difficulty: float) -> float:
        if self.puzzle == "hashcash":
            return float(self.bits_seconds[int(difficulty)])
        return self.overhead_s + float(difficulty) / self.rate

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
    """The pricer for --puzzle/--timing_table; `measure(kind, workers)` gives a live (overhead_s, rate)."""
    if table not in TABLES:
        raise unknown_name("timing table", table, TABLES)
    if table == "paper":
        if puzzle != "hashcash":
            raise UserError("the paper's timing table is for hashcash (SHA-1 bits); use --puzzle hashcash")
        rate = float(np.median([2.0 ** b / t for b, t in PAPER_HASHCASH_SECONDS.items() if b >= 16]))
        return PuzzlePricer(puzzle, rate=rate, bits_seconds=PAPER_HASHCASH_SECONDS, source="paper")
    if table == "measured":
        frame = read_timing_csv(timing_csv)
        rows = frame[(frame["puzzle"] == puzzle) & (frame["solver"] == solver)]
        if rows.empty:
            raise UserError(f"timing table {timing_csv} has no rows for puzzle {puzzle} with solver {solver}; "
                            f"rerun pow-calibrate with --puzzles {puzzle} --solver {solver}")
        slope, intercept = np.polyfit(rows["expected_work"].to_numpy(float), rows["mean_s"].to_numpy(float), 1)
        rate = 1.0 / slope if slope > 0 else float(rows["rate"].median())
        bits = ({int(r.difficulty): float(r.mean_s) for r in rows.itertuples()} if puzzle == "hashcash" else None)
        return PuzzlePricer(puzzle, rate=rate, overhead_s=max(0.0, float(intercept)), bits_seconds=bits,
                            source=f"measured ({timing_csv})")
    if solver == "native" and puzzle == "hashcash":
        from pow.hashcash import native_rate
        overhead, rate = 0.0, native_rate() * workers
    else:
        overhead, rate = measure(HASH_KIND[puzzle], workers)
    return PuzzlePricer(puzzle, rate=rate, overhead_s=overhead, source=f"live ({solver}, {workers} workers)")
