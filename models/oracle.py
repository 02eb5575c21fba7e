"""The victim behind an API: the one place where query counting, accounting and proof-of-work attach.

Victim is the shared, stateless model; Account is one client's counters and ledger; VictimOracle is a
client's metered view (both together). A server holds one Victim and an Account per user.

Oracle is what the extraction loop queries: answers, counts and costs, and the payment made. A local
victim (VictimOracle, unpriced; extraction.oracles.PricedOracle, which prices each round with the
calibrated PoW) and a live server (server.client.RemoteOracle, which pays the server's own prices)
reach the loop the same way: it asks each one, after every round, what was paid (settle).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from common.errors import ConfigError, UserError
from data.registry import to_float
from models.training import predict_logits

OUTPUTS = ("labels", "probs")  # what the API returns


@dataclass(frozen=True)
class Payment:
    """The proof-of-work paid for one round: seconds and expected work, and the round's puzzle difficulty
    (NaN where nothing was priced)."""
    seconds: float = 0.0
    work: float = 0.0
    difficulty: float = math.nan


class Oracle(Protocol):
    """What the extraction loop queries; see the module's docstring."""
    priced: bool  # True: it charges proof-of-work (the log's PoW columns are filled)

    @property
    def queries(self) -> int: ...

    @property
    def query_time_s(self) -> float: ...

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """The answers to one batch: labels (int64) or probabilities (float)."""

    def totals(self) -> dict:
        """queries, query_time_s and the accountants' cumulative costs."""

    def settle(self, queries_before: int, time_before: float) -> Payment:
        """The payment for the round since (queries_before, time_before): priced here, or read from the
        server that priced it."""

    def describe(self) -> dict:
        """What prices it ({"calibrator": ..., "pow_pricer": ...}, or {})."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def close(self) -> None:
        """Release what it holds (solver processes, connections)."""


class Victim:
    """The shared, stateless side of the API: the model answering a batch. Holds no per-client state, so
    one Victim serves every client (and thread: inference only, under no_grad)."""

    def __init__(self, model: torch.nn.Module, *, device: torch.device, output: str = "labels"):
        if output not in OUTPUTS:
            raise ConfigError(f"unknown victim output '{output}'; valid outputs: {', '.join(OUTPUTS)}")
        self.model, self.device, self.output = model.eval(), device, output

    @torch.no_grad()
    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """The victim's log-softmax for a batch, on the CPU (no accounting)."""
        return F.log_softmax(self.model(to_float(x).to(self.device)).float(), dim=1).cpu()

    def representations(self, x: torch.Tensor) -> torch.Tensor:
        """Log-softmax of many images (e.g. the victim's training set), in chunks, without accounting."""
        return F.log_softmax(predict_logits(self.model, x, self.device), dim=1)

    def answer(self, logp: torch.Tensor) -> torch.Tensor:
        """What the API returns for log-probabilities: labels (int64) or probabilities (float)."""
        return logp.argmax(1) if self.output == "labels" else logp.exp()


class Account:
    """One client's side: its query count, the time the API spent answering it, and its ledger (the
    accountants' running costs). Everything a resumed run or a server must keep per client."""

    def __init__(self, ledger=None):
        self.ledger = ledger
        self.queries = 0
        self.query_time_s = 0.0
        self.last_costs: dict = {}

    def charge(self, logp: torch.Tensor, images: torch.Tensor, seconds: float) -> dict:
        """Account one answered batch; `seconds` is the answering time so far (the ledger's time is added)."""
        start = time.perf_counter()
        if self.ledger is not None:
            self.last_costs = self.ledger.add(logp, images=images)
        self.query_time_s += seconds + time.perf_counter() - start
        self.queries += len(images)
        return self.last_costs

    def totals(self) -> dict:
        costs = self.ledger.totals() if self.ledger is not None else {}
        return {"queries": self.queries, "query_time_s": self.query_time_s, **costs}

    def state_dict(self) -> dict:
        return {"queries": self.queries, "query_time_s": self.query_time_s,
                "ledger": self.ledger.state_dict() if self.ledger is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.queries, self.query_time_s = int(state["queries"]), float(state["query_time_s"])
        if self.ledger is not None and state.get("ledger") is not None:
            self.ledger.load_state_dict(state["ledger"])


class VictimOracle:
    """One client's metered view of the victim: a shared Victim answers, the client's Account is charged.

    query_time_s is the time the API spends answering: the forward pass plus the accounting, as a
    defended server would do both. It charges no proof-of-work (PricedOracle adds it).
    """
    priced = False

    def __init__(self, model: torch.nn.Module, *, device: torch.device, output: str = "labels", ledger=None,
                 victim: Victim | None = None):
        self.victim = victim or Victim(model, device=device, output=output)
        self.account = Account(ledger)

    @property
    def queries(self) -> int:
        return self.account.queries

    @property
    def query_time_s(self) -> float:
        return self.account.query_time_s

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        return self.victim.log_probs(x)

    def representations(self, x: torch.Tensor) -> torch.Tensor:
        return self.victim.representations(x)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """Answer one batch: labels (int64) or probabilities (float), per the victim's output setting.
        A batch with a non-finite pixel is refused: NaN images would be charged nothing by entropy."""
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise UserError(f"a query batch of {len(x)} images holds NaN or infinite pixels, which the API refuses; "
                            f"an attack that makes its images (dfme) has diverged: lower its learning rates")
        start = time.perf_counter()
        logp = self.victim.log_probs(x)
        answer = self.victim.answer(logp)
        self.account.charge(logp, x, time.perf_counter() - start)
        return answer

    def totals(self) -> dict:
        return self.account.totals()

    def state_dict(self) -> dict:
        return self.account.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.account.load_state_dict(state)

    def settle(self, queries_before: int, time_before: float) -> Payment:
        return Payment()

    def describe(self) -> dict:
        return {}

    def close(self) -> None:
        pass
