"""pow-mint, pow-check and pow-calibrate: puzzles from the command line, and the re-measured timing table."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import UserError
from common.io import atomic_savefig, atomic_write_csv, check_outputs, params_beside, write_params_beside
from parameters import POS_INT, PUZZLE_NAMES, add_puzzle, add_solver, add_stamp_fields, default_text, number
from pow import hashcash, kinds, puzzles
from pow.keys import resolve_key
from pow.solver import Solver, default_workers, measure_rate
from pow.timing import PUZZLES, TIMING_COLUMNS

DEFAULT_WORK = 1000.0  # pow-mint: expected evaluations of a challenge issued here, unless --work


def _key(s) -> bytes:
    return resolve_key(s.key, insecure_dev=bool(s.insecure_dev_key))


def pow_mint(s) -> tuple:
    """Solve a puzzle: a hashcash stamp (--bits), or a pow1 challenge (--challenge, or one issued here)."""
    kind = kinds.get(s.puzzle)
    workers = s.workers or default_workers()
    if not kind.signed and not s.bits:
        raise UserError(f"pow-mint --puzzle {kind.name} needs --bits")
    start = time.perf_counter()
    with Solver(workers) as solver:
        if not kind.signed:
            task, difficulty = kind.issue(key=b"", resource=s.resource, difficulty=int(s.bits), subs=1), int(s.bits)
        elif s.challenge:
            parsed = puzzles.parse(s.challenge)
            if isinstance(parsed, str):
                raise UserError(f"--challenge is not a challenge: {parsed}")
            task, difficulty = s.challenge, parsed.work
        else:
            difficulty = DEFAULT_WORK if s.work is None else s.work
            task = kind.issue(key=_key(s), resource=s.resource, difficulty=difficulty, subs=s.pow_subs)
        result, tried = kind.solve(solver, task, difficulty, solver_name=s.solver)
    seconds = time.perf_counter() - start
    info = {"solution": result, "seconds": seconds, "evaluations": tried, "workers": workers}
    return info, f"{result}\n# {seconds:.4f} s, {tried:.0f} evaluations, {workers} workers"


def pow_check(s) -> tuple:
    """Verify a hashcash stamp (--stamp) or a pow1 solution (--solution); says why it fails."""
    if bool(s.stamp) == bool(s.solution):
        raise UserError("pow-check needs exactly one of --stamp (hashcash) or --solution (pow1)")
    if s.stamp:
        if not s.bits:
            raise UserError("pow-check --stamp needs --bits (the difficulty required)")
        verdict = hashcash.check(s.stamp, bits=int(s.bits), resource=s.resource)
    else:
        if not kinds.get(s.puzzle).signed:
            raise UserError(f"pow-check --solution needs --puzzle {' or '.join(puzzles.KINDS)} (the kind required)")
        verdict = puzzles.verify(s.solution, key=_key(s), kind=s.puzzle, resource=s.resource,
                                 min_work=float(s.min_work))
    text = "ok" if verdict else f"rejected: {verdict.reason}"
    if not verdict:
        raise UserError(text)
    return verdict, text


def pow_calibrate(s, *, progress: bool = True) -> tuple:
    """Measure solve-time mean / median / p90 per difficulty for each puzzle; CSV and plot."""
    workers = s.workers or default_workers()
    chosen = [p for p in str(s.puzzles).split(",") if p]
    unknown = sorted(set(chosen) - set(kinds.NAMES))
    if not chosen or unknown:
        raise UserError(f"--puzzles takes a comma-separated list of {', '.join(kinds.NAMES)}; got '{s.puzzles}'")
    if int(s.trials) < 1:
        raise UserError(f"--trials must be at least 1, got {s.trials}")
    out = Path(s.out or "results/pow_timing.csv")
    check_outputs({"--out": out, "the plot": out.with_suffix(".png"), "the settings record": params_beside(out)}, {})
    rows = []
    key = os.urandom(32)
    with Solver(workers) as solver:
        for name in chosen:
            rows.extend(_calibrate_kind(kinds.get(name), s, solver, key, workers, progress))
    frame = pd.DataFrame(rows, columns=TIMING_COLUMNS)
    atomic_write_csv(out, frame)
    write_params_beside(out, s.as_dict(), "pow-calibrate")
    _plot_timing(frame, out.with_suffix(".png"))
    text = frame.to_string(index=False, float_format=lambda v: f"{v:.6g}")
    return frame, f"{text}\nwritten to {out} and {out.with_suffix('.png')}"


def _calibrate_kind(kind, s, solver, key: bytes, workers: int, progress: bool) -> list:
    """pow-calibrate's rows for one puzzle kind: --trials solves at each of its levels up to --max_seconds."""
    from tqdm.auto import tqdm

    rate = kind.native_rate(workers) if s.solver == "native" else None
    if rate is None:
        rate = measure_rate(kind.hash_kind, workers=workers, seconds=0.3)
    rows = []
    for level in tqdm(kind.calibration_levels(rate, float(s.max_seconds)), desc=kind.name, disable=not progress,
                      leave=False):
        times, tries = [], []
        for _ in range(int(s.trials)):
            start = time.perf_counter()
            task = kind.issue(key=key, resource="calibrate", difficulty=level, subs=s.pow_subs)
            _, tried = kind.solve(solver, task, level, solver_name=s.solver)
            times.append(time.perf_counter() - start)
            tries.append(tried)
        t = np.array(times)
        rows.append({"puzzle": kind.name, "solver": kind.solver_label(s.solver), "workers": workers,
                     "difficulty": level, "expected_work": kind.work(level), "trials": len(t),
                     "mean_tries": float(np.mean(tries)), "mean_s": float(t.mean()),
                     "median_s": float(np.median(t)), "p90_s": float(np.quantile(t, 0.9)), "rate": rate})
    return rows


def _plot_timing(frame: pd.DataFrame, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for puzzle, g in frame.groupby("puzzle"):
        ax.errorbar(g["expected_work"], g["mean_s"], yerr=[g["mean_s"] - g["median_s"].clip(upper=g["mean_s"]),
                                                            (g["p90_s"] - g["mean_s"]).clip(lower=0)],
                    fmt="-o", ms=3, capsize=2, label=f"{puzzle} (mean, median to p90)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("expected work (hash evaluations)")
    ax.set_ylabel("solve time (s)")
    ax.set_title("Measured puzzle solve time on this machine")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    atomic_savefig(fig, path)
    plt.close(fig)


def add_pow_mint_arguments(sub) -> None:
    p = sub.add_parser("pow-mint", help="solve a puzzle: a hashcash stamp, or a signed numeric-target challenge")
    add_puzzle(p)
    add_stamp_fields(p)
    p.add_argument("--work", type=number(float, 1), default=None,
                   help="sha256/scrypt: expected evaluations (default: 1000)")
    p.add_argument("--challenge", default=None, help="sha256/scrypt: a server's challenge (default: issue one here)")


def add_pow_check_arguments(sub) -> None:
    p = sub.add_parser("pow-check", help="verify a hashcash stamp or a challenge solution; says why it fails")
    add_stamp_fields(p)
    p.add_argument("--stamp", default=None, help="a hashcash stamp")
    p.add_argument("--puzzle", default=None, choices=PUZZLES,
                   help="the puzzle kind the server requires; a solution of another kind is rejected "
                        f"{default_text('puzzle')}")
    p.add_argument("--solution", default=None, help="a pow1 solution (challenge|nonces)")
    p.add_argument("--min_work", type=number(float, 1), default=None, help="pow1: least work accepted (default: 1)")


def add_pow_calibrate_arguments(sub) -> None:
    p = sub.add_parser("pow-calibrate", help="measure puzzle solve times per difficulty here (CSV and plot)")
    p.add_argument("--puzzles", default=None, type=PUZZLE_NAMES,
                   help="comma-separated (default: hashcash,sha256,scrypt)")
    add_solver(p)
    p.add_argument("--trials", type=POS_INT, default=None, help="solves per difficulty (default: 20)")
    p.add_argument("--max_seconds", type=number(float, 0, 3600, lo_open=True), default=None,
                   help="largest difficulty: about this many seconds per solve (default: 1.0)")
    p.add_argument("--out", default=None, help="CSV (default: results/pow_timing.csv; plot beside it)")
