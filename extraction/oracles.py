"""A local victim that charges the calibrated proof-of-work: what a defended API does, in one process.

PricedOracle wraps a VictimOracle. After each round the calibrator prices the round's queries and cost in
PoW seconds, and the payer turns them into one puzzle per batch, simulated (expected time) or solved.
"""
from __future__ import annotations

import torch

from models.oracle import Payment, VictimOracle
from pow.pricing import PowPayer


class PricedOracle:
    """A VictimOracle whose every round is priced by `calibrator` on `cost_column` and paid by `payer`."""
    priced = True

    def __init__(self, inner: VictimOracle, *, calibrator, payer: PowPayer, cost_column: str, query_batch: int):
        self.inner, self.calibrator, self.payer = inner, calibrator, payer
        self.cost_column, self.query_batch = cost_column, query_batch

    @property
    def queries(self) -> int:
        return self.inner.queries

    @property
    def query_time_s(self) -> float:
        return self.inner.query_time_s

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.query(x)

    def totals(self) -> dict:
        return self.inner.totals()

    def settle(self, queries_before: int, time_before: float) -> Payment:
        totals = self.inner.totals()
        seconds = float(self.calibrator.extra_seconds(queries_before, totals["queries"], totals[self.cost_column],
                                                      time_prev=time_before, time_s=totals["query_time_s"]))
        batches = -(-(totals["queries"] - queries_before) // self.query_batch)
        paid = self.payer.pay(seconds, batches=batches)
        return Payment(paid["seconds"], paid["work"], paid["difficulty"])

    def describe(self) -> dict:
        return {"calibrator": self.calibrator.describe(), "pow_pricer": self.payer.describe()}

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)

    def close(self) -> None:
        self.payer.close()
