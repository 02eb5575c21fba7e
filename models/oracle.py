"""The victim behind an API: the one place where query counting, accounting and proof-of-work attach."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from common.errors import ConfigError
from data.registry import to_float
from models.training import predict_logits

OUTPUTS = ("labels", "probs")  # what the API returns


class VictimOracle:
    """Answers batches of images with labels or probabilities, counting queries and answer time.

    Each answered batch goes to the ledger (privacy cost). query_time_s is the time the API spends
    answering: the forward pass plus the accounting, as a defended server would do both.
    """

    def __init__(self, model: torch.nn.Module, *, device: torch.device, output: str = "labels", ledger=None):
        if output not in OUTPUTS:
            raise ConfigError(f"unknown victim output '{output}'; valid outputs: {', '.join(OUTPUTS)}")
        self.model, self.device, self.output, self.ledger = model.eval(), device, output, ledger
        self.queries = 0
        self.query_time_s = 0.0
        self.last_costs: dict = {}

    @torch.no_grad()
    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """The victim's log-softmax for a batch, on the CPU (no accounting)."""
        return F.log_softmax(self.model(to_float(x).to(self.device)).float(), dim=1).cpu()

    def representations(self, x: torch.Tensor) -> torch.Tensor:
        """Log-softmax of many images (e.g. the victim's training set), in chunks, without accounting."""
        return F.log_softmax(predict_logits(self.model, x, self.device), dim=1)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """Answer one batch: labels (int64) or probabilities (float), per the oracle's output setting."""
        start = time.perf_counter()
        logp = self.log_probs(x)
        if self.ledger is not None:
            self.last_costs = self.ledger.add(logp, images=x)
        answer = logp.argmax(1) if self.output == "labels" else logp.exp()
        self.query_time_s += time.perf_counter() - start
        self.queries += len(x)
        return answer

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
