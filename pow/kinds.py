"""The puzzle kinds behind one interface, and their registry.

hashcash        version-1 stamps (SHA-1, leading zero bits), as the paper used: the client mints a stamp
                on a resource; difficulty is a whole number of bits, the expected work 2^bits, and a
                time is priced to the bits whose (measured or modelled) solve time is nearest in log space.
sha256, scrypt  signed numeric-target challenges (puzzles.py): the server issues them under its key;
                difficulty is the expected work W itself, a real number, so a time t prices exactly to
                W = (t - overhead_s) x rate.

Everything that differs between kinds lives here; the pricer, the gate, the client, the solvers and the
commands look a kind up with get(name) and call it. No caller compares kind names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from common.errors import ConfigError, unknown_name
from pow import hashcash, puzzles
from pow.hashcash import Verdict

#: the paper's measured mean SHA-1 hashcash solve time (Python solver), seconds, for bits 1..32
PAPER_HASHCASH_SECONDS = {
    1: 0.000018, 2: 0.000046, 3: 0.00005, 4: 0.000056, 5: 0.000181, 6: 0.000315, 7: 0.000325, 8: 0.000704,
    9: 0.001079, 10: 0.003480, 11: 0.007472, 12: 0.008756, 13: 0.018955, 14: 0.049600, 15: 0.065657,
    16: 0.239012, 17: 0.489723, 18: 0.549378, 19: 1.474332, 20: 2.927822, 21: 4.340743, 22: 8.519815,
    23: 15.106678, 24: 23.196483, 25: 151.251428, 26: 245.364584, 27: 565.612546, 28: 666.044603,
    29: 1069.022753, 30: 1533.945173, 31: 2832.509785, 32: 2948.467908,
}
DEFAULT = "scrypt"  # the puzzle a server issues and an extraction pays, unless --puzzle says otherwise
DEFAULT_SUBS = 1  # sub-puzzles per challenge (--pow_subs)
MODEL_BITS = range(1, 41)  # hashcash levels a rate model prices when no table gives their times
CALIBRATION_TARGET_LEVELS = 10  # pow-calibrate: target-puzzle work levels, geometric from 1 to rate x seconds


class SolveModel(Protocol):
    """What a price needs: a solver's rate and overhead (time = overhead_s + work / rate), and for a
    levelled kind the mean seconds of each level (None: modelled from the rate)."""
    rate: float
    overhead_s: float
    bits_seconds: dict | None


class Puzzle(Protocol):
    name: str
    hash_kind: str  # the function one evaluation computes: sha1, sha256 or scrypt
    signed: bool  # the server issues signed challenges of this kind (what the prediction API needs)
    paper_seconds: dict | None  # the paper's measured time per level, when the paper measured this kind

    def subs(self, requested: int) -> int:
        """Sub-solutions a puzzle of this kind really has, when `requested` are asked for."""

    def work(self, difficulty: float) -> float:
        """Expected hash evaluations of one puzzle of this difficulty."""

    def level_for_work(self, work: float) -> float:
        """The difficulty whose expected work is nearest `work`."""

    def model_levels(self, rate: float, overhead_s: float) -> dict | None:
        """Seconds per level modelled from a rate (None for a continuous kind)."""

    def measured_levels(self, difficulties, mean_s) -> dict | None:
        """Seconds per level from a timing table's rows (None for a continuous kind)."""

    def difficulty(self, seconds: float, model: SolveModel) -> float:
        """The difficulty that takes `seconds` to solve under `model`."""

    def expected_seconds(self, difficulty: float, model: SolveModel) -> float:
        """Mean solve time of one puzzle of this difficulty under `model`."""

    def calibration_levels(self, rate: float, max_seconds: float) -> list:
        """The difficulties pow-calibrate measures, up to about max_seconds at `rate`."""

    def issue(self, *, key: bytes, resource: str, difficulty: float, subs: int) -> str:
        """What the client is handed to solve: a signed challenge, or the resource a stamp is minted on."""

    def solve(self, solver, task: str, difficulty: float, *, solver_name: str = "python") -> tuple:
        """(answer, evaluations tried) for `task` (from issue) with a pow.solver.Solver."""

    def verify(self, answer: str, *, key: bytes, resource: str, difficulty: float, replay=None) -> Verdict:
        """Whether `answer` pays for a puzzle of `difficulty` on `resource`; never raises."""

    def native_rate(self, workers: int) -> float | None:
        """Evaluations per second of a native tool on `workers` cores, where one exists (else None)."""

    def solver_label(self, solver_name: str) -> str:
        """The solver a timing-table row of this kind is measured with, when `solver_name` is asked for."""


@dataclass(frozen=True)
class Hashcash:
    """SHA-1 stamps of a whole number of leading zero bits, minted by the client on a resource."""
    name: str = "hashcash"
    hash_kind: str = "sha1"
    signed: bool = False
    paper_seconds: dict | None = None

    def subs(self, requested: int) -> int:
        return 1

    def work(self, difficulty: float) -> float:
        return 2.0 ** difficulty

    def level_for_work(self, work: float) -> float:
        return max(1, int(round(math.log2(max(work, 1.0)))))

    def model_levels(self, rate: float, overhead_s: float) -> dict:
        return {b: overhead_s + 2.0 ** b / rate for b in MODEL_BITS}

    def measured_levels(self, difficulties, mean_s) -> dict:
        return {int(d): float(t) for d, t in zip(difficulties, mean_s)}

    def difficulty(self, seconds: float, model: SolveModel) -> int:
        bits = np.array(list(model.bits_seconds))
        times = np.array(list(model.bits_seconds.values()))
        return int(bits[np.argmin(np.abs(np.log(times) - math.log(max(seconds, 1e-12))))])

    def expected_seconds(self, difficulty: float, model: SolveModel) -> float:
        return float(model.bits_seconds[int(difficulty)])

    def calibration_levels(self, rate: float, max_seconds: float) -> list:
        top = int(np.floor(np.log2(max(rate * max_seconds, 2))))
        return list(range(1, max(top, 1) + 1))

    def issue(self, *, key: bytes, resource: str, difficulty: float, subs: int) -> str:
        return resource  # the stamp's fields are checked when the solver builds it

    def solve(self, solver, task: str, difficulty: float, *, solver_name: str = "python") -> tuple:
        return solver.solve_hashcash(task, int(difficulty), solver=solver_name)

    def verify(self, answer: str, *, key: bytes, resource: str, difficulty: float, replay=None) -> Verdict:
        return hashcash.check(answer, bits=int(difficulty), resource=resource, replay=replay)

    def native_rate(self, workers: int) -> float:
        return hashcash.native_rate() * workers

    def solver_label(self, solver_name: str) -> str:
        return solver_name


@dataclass(frozen=True)
class Target:
    """Signed pow1 challenges over `hash_kind` with a continuous expected work (puzzles.py)."""
    name: str
    hash_kind: str
    signed: bool = True
    paper_seconds: dict | None = None

    def subs(self, requested: int) -> int:
        return requested

    def work(self, difficulty: float) -> float:
        return float(difficulty)

    def level_for_work(self, work: float) -> float:
        return float(work)

    def model_levels(self, rate: float, overhead_s: float) -> None:
        return None

    def measured_levels(self, difficulties, mean_s) -> None:
        return None

    def difficulty(self, seconds: float, model: SolveModel) -> float:
        return min(max(1.0, (seconds - model.overhead_s) * model.rate), puzzles.MAX_WORK)

    def expected_seconds(self, difficulty: float, model: SolveModel) -> float:
        return model.overhead_s + float(difficulty) / model.rate

    def calibration_levels(self, rate: float, max_seconds: float) -> list:
        top = max(rate * max_seconds, 4.0)
        return [float(w) for w in np.unique(np.round(np.geomspace(1, top, CALIBRATION_TARGET_LEVELS), 3))]

    def issue(self, *, key: bytes, resource: str, difficulty: float, subs: int) -> str:
        return puzzles.issue(key=key, resource=resource, work=difficulty, kind=self.name, subs=subs)

    def solve(self, solver, task: str, difficulty: float, *, solver_name: str = "python") -> tuple:
        return solver.solve_target(task)

    def verify(self, answer: str, *, key: bytes, resource: str, difficulty: float, replay=None) -> Verdict:
        return puzzles.verify(answer, key=key, kind=self.name, resource=resource, min_work=difficulty,
                              replay=replay)

    def native_rate(self, workers: int) -> None:
        return None

    def solver_label(self, solver_name: str) -> str:
        return "python"


REGISTRY: dict = {p.name: p for p in (Hashcash(paper_seconds=PAPER_HASHCASH_SECONDS),
                                      *(Target(kind, kind) for kind in puzzles.KINDS))}
NAMES = tuple(REGISTRY)
SERVED = ("scrypt", "sha256")  # the signed kinds the prediction server issues, the memory-hard one first
assert all(REGISTRY[name].signed for name in SERVED)


def get(name) -> Puzzle:
    """The puzzle kind called `name`; an unknown name is a ConfigError that lists the kinds."""
    if isinstance(name, str) and name in REGISTRY:
        return REGISTRY[name]
    raise unknown_name("puzzle", name, NAMES)


def by_hash(hash_kind: str) -> Puzzle:
    """The puzzle kind whose evaluation is `hash_kind` (sha1, sha256 or scrypt)."""
    for puzzle in REGISTRY.values():
        if puzzle.hash_kind == hash_kind:
            return puzzle
    raise ConfigError(f"unknown hash '{hash_kind}'; valid: {', '.join(p.hash_kind for p in REGISTRY.values())}")
