"""Paying the calibrated PoW inside the extraction loop: simulated (expected time) or real (solved).

The calibrator prices a round in seconds; the payer turns each batch's share into a puzzle difficulty
(timing.PuzzlePricer) and either adds the expected solve time (--pow simulated) or issues, solves and
verifies one puzzle per batch and adds the measured time (--pow real). The two sides are apart: PowGate
is the server's (key, issue, verify, spent set), PowClient the client's (the solver pool).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from common import checks
from common.errors import UserError
from pow import kinds
from pow.replay import ReplayGuard
from pow.solver import Solver, default_workers, profile_solver
from pow.timing import make_pricer

POW_MODES = ("simulated", "real")
PROFILE_SECONDS = 1.0  # how long the live solver profile runs


class PowGate:
    """The server's side: prices seconds into a difficulty, issues signed challenges under its own key,
    and verifies solutions (or hashcash stamps) once each, against its spent set."""

    def __init__(self, *, puzzle: str, subs: int, pricer, resource: str, key: bytes | None = None):
        self.puzzle, self.subs, self.pricer, self.resource = puzzle, subs, pricer, resource
        self.kind = kinds.get(puzzle)
        self.key = key or os.urandom(32)
        self.replay = ReplayGuard()

    def issue(self, difficulty: float) -> str:
        """What the client solves: a signed challenge, or (hashcash) the resource to mint a stamp on."""
        return self.kind.issue(key=self.key, resource=self.resource, difficulty=difficulty, subs=self.subs)

    def check(self, answer: str, difficulty: float) -> None:
        """A RuntimeError unless `answer` (a solution, or a stamp for hashcash) is valid and unspent."""
        verdict = self.kind.verify(answer, key=self.key, resource=self.resource, difficulty=difficulty,
                                   replay=self.replay)
        if not verdict:
            raise RuntimeError(f"the server rejected a solved puzzle: {verdict.reason}")


class PowClient:
    """The client's side: solves challenges (or mints stamps) with the multi-core solver. Use as a context
    manager, or call close(): the solver's worker pool is released in every case."""

    def __init__(self, *, solver: str, workers: int):
        self.solver_name, self.workers = solver, workers
        self._solver = Solver(workers).__enter__()

    def solve(self, gate: PowGate, difficulty: float) -> str:
        answer, _ = gate.kind.solve(self._solver, gate.issue(difficulty), difficulty, solver_name=self.solver_name)
        return answer

    def close(self) -> None:
        if self._solver is not None:
            self._solver.__exit__(None, None, None)
            self._solver = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PowPayer:
    """Prices and pays one client's PoW in the simulated extraction loop, batch by batch: a PowGate for
    the server, and (with --pow real) a PowClient that solves each batch's challenge."""

    def __init__(self, *, mode: str, puzzle: str, subs: int, solver: str, workers: int | None, timing_table: str,
                 timing_csv, resource: str):
        if mode not in POW_MODES:
            raise UserError(f"unknown --pow '{mode}'; valid: {', '.join(POW_MODES)}")
        self.mode, self.subs, self.solver_name = mode, subs, solver
        self.workers = workers or default_workers()
        self.pricer = make_pricer(puzzle, table=timing_table, solver=solver, workers=self.workers,
                                  timing_csv=timing_csv,
                                  measure=lambda kind, w: profile_solver(kind, workers=w, subs=subs,
                                                                         seconds=PROFILE_SECONDS))
        self.gate = PowGate(puzzle=puzzle, subs=subs, pricer=self.pricer, resource=resource)
        self.client = PowClient(solver=solver, workers=self.workers) if mode == "real" else None

    def pay(self, seconds: float, *, batches: int) -> dict:
        """Pay `seconds` of calibrated PoW spread over `batches` batches; returns seconds, work, difficulty."""
        seconds = checks.finite("PoW seconds", seconds, lo=0)
        if batches <= 0 or seconds == 0:
            return {"seconds": 0.0, "work": 0.0, "difficulty": 0.0}
        difficulty = self.pricer.difficulty(seconds / batches)
        work = batches * self.pricer.work(difficulty)
        if self.mode == "simulated":
            return {"seconds": batches * self.pricer.expected_seconds(difficulty), "work": work,
                    "difficulty": difficulty}
        spent = 0.0
        for _ in range(batches):
            start = time.perf_counter()
            self.gate.check(self.client.solve(self.gate, difficulty), difficulty)
            spent += time.perf_counter() - start
        return {"seconds": spent, "work": work, "difficulty": difficulty}

    def describe(self) -> dict:
        return {"pow": self.mode, "solver": self.solver_name, "workers": self.workers, "subs": self.subs,
                **self.pricer.describe()}

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def compare_real_simulated(simulated_log, real_log, params_json) -> dict:
    """Real against simulated PoW time of two runs of the same settings, with the expected spread.

    Each batch's puzzle takes overhead_s + work/rate seconds on average; the work part of each of its
    `subs` sub-solutions is geometric, so one batch's time has standard deviation (W/rate)/sqrt(subs).
    """
    import pandas as pd

    sim, real = pd.read_csv(simulated_log), pd.read_csv(real_log)
    params = json.loads(Path(params_json).read_text())["settings"]
    pricer, batch = params["pow_pricer"], params["query_batch"]
    subs = kinds.get(params["puzzle"]).subs(params["pow_subs"])
    batches = sim["queries"].diff().fillna(sim["queries"].iloc[0]).to_numpy() / batch
    work = sim["pow_work"].diff().fillna(sim["pow_work"].iloc[0]).to_numpy() / batches
    work_s = work / pricer["rate"]
    sd = float((batches * work_s ** 2 / subs).sum() ** 0.5)
    a, b = float(sim["pow_time_s"].iloc[-1]), float(real["pow_time_s"].iloc[-1])
    return {"simulated_s": a, "real_s": b, "difference_s": b - a, "expected_sd_s": sd,
            "z": (b - a) / sd if sd > 0 else float("nan")}
