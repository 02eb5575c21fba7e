"""The attack contract, and the registry. Attacks never see the victim: the extraction loop owns the one
metered oracle, answers every query through it, and hands the attack the answers.

PoolAttack      chooses the next n queries, given the current stolen model (select(n, stolen)); sees
                every answered batch (observe); the shared loop trains the stolen model on all answers.
TrainingAttack  owns its training (mixmatch, dfme): each round the loop hands it a
                query function bound to the metered oracle and an exact number of queries to spend;
                the attack makes its queries, trains the stolen model its own way, and the loop logs
                the round, prices it and commits it like any other.
Subclasses register themselves with @register; this module imports none of them (attacks/__init__.py
imports each one), so `from attacks import Attack` works inside an attack module.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from common.errors import UserError, unknown_name
from models.training import predict_logits

MAX_POOL_BYTES = 2 ** 30  # a pool attack's images (uint8), at most: checked before anything is allocated


@dataclass(frozen=True)
class AttackContext:
    """What an attack may use: the dataset spec, the attacker's in-distribution pool, and its settings.

    There is no victim here: answers come only from the loop's metered oracle."""
    spec: Any
    pool_x: torch.Tensor
    budget: int
    seed: int
    data_dir: str = "data"
    ood_pool: str = "photos"
    device: torch.device = torch.device("cpu")
    cost_measure: str = "entropy"  # the defence the worst-case attacker knows
    cost_params: tuple = (("k", 300), ("sigma", 28.0), ("delta", 1e-5))  # ... and its parameters (+ teachers,
    #                                                                     pate_sigma under a PATE measure)
    sampling: str = "random"  # knockoff: random or adaptive
    jacobian_cap: int | None = None  # jacobian: most points augmented per generation (None: all)
    query_batch: int = 64  # queries per batch (--query_batch)
    batch_size: int = 64  # training attacks: their training batch (--batch_size)
    epochs: int = 1  # training attacks: epochs per round (--stolen_epochs)
    round_size: int = 256  # queries per round (--batches_per_round * --query_batch)
    options: Any = None  # the mode's own typed settings (its Options dataclass), when it has any


class Attack:
    """Base class of every attack; state_dict() must hold only tensors, numbers, strings and containers."""
    name = ""
    soft_targets = False  # True: trains on the victim's probabilities (needs --victim_output probs)
    Options = None  # a dataclass of the mode's own settings; its field names are the flags' names
    uses_ood_pool = False  # True: its queries come from --ood_pool (copycat, knockoff, worstcaseood)

    @staticmethod
    def default_arch(spec) -> str | None:
        """The stolen model's architecture when --stolen_arch is not given (None: the dataset's default)."""
        return None

    def __init__(self, ctx: AttackContext):
        self.ctx = ctx

    @classmethod
    def max_budget(cls, pool_size: int) -> int | None:
        """The most queries this attack can send given an in-distribution pool of pool_size (None: no limit)."""
        return None

    @classmethod
    def min_budget(cls, spec) -> int:
        """The fewest queries this attack can start with on dataset `spec` (a DatasetSpec)."""
        return 1

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore from state_dict(); a state of the wrong shape is a UserError."""


class PoolAttack(Attack):
    """Chooses queries from images it holds; the loop trains the stolen model on every answer so far."""

    def select(self, n: int, stolen: torch.nn.Module) -> torch.Tensor:
        """The next n query images (uint8 or float in [0, 1], shaped like the victim's input)."""
        raise NotImplementedError

    def observe(self, x: torch.Tensor, answers: torch.Tensor) -> None:
        """Called with every answered batch."""

    def restore_history(self, xs: list, answers: list) -> None:
        """On resume, after load_state_dict: every batch answered so far, for attacks that keep them."""

    def build_pool(self) -> torch.Tensor:
        raise NotImplementedError

    def _pool(self) -> torch.Tensor:
        """build_pool(), after checking that one image per query fits in memory and in the pool."""
        need = self.ctx.budget * math.prod(self.ctx.spec.input_shape)
        if need > MAX_POOL_BYTES:
            raise UserError(f"attack '{self.name}' keeps one image per query: --budget {self.ctx.budget} on "
                            f"'{self.ctx.spec.name}' would need {need / 2 ** 30:.1f} GiB, more than the "
                            f"{MAX_POOL_BYTES / 2 ** 30:.0f} GiB allowed; lower --budget")
        images = self.build_pool()
        if self.ctx.budget > len(images):
            raise UserError(f"attack '{self.name}' can send at most {len(images)} distinct queries on "
                            f"'{self.ctx.spec.name}', but --budget is {self.ctx.budget}; lower --budget")
        return images


class TrainingAttack(Attack):
    """Makes its own queries and trains the stolen model itself, round by round.

    keeps_queries: the loop saves every answered batch in the run's round files and hands them back
    on resume (restore_history); an attack that needs none of them (dfme) sets it False, so its saved
    state stays the size of its models, however many queries it sends."""
    keeps_queries = True

    def __init__(self, ctx: AttackContext):
        super().__init__(ctx)
        self._optimizer = None  # over the stolen copy, which exists only from the first round on
        self._saved_optimizer = None  # its state from a resumed run, loaded when the optimizer is made

    def make_optimizer(self, stolen: torch.nn.Module) -> torch.optim.Optimizer:
        """The attack's own optimizer over the stolen copy."""
        raise NotImplementedError

    def optimizer(self, stolen: torch.nn.Module) -> torch.optim.Optimizer:
        """make_optimizer(stolen), made once, with the resumed run's state loaded into it."""
        if self._optimizer is None:
            self._optimizer = self.make_optimizer(stolen)
            if self._saved_optimizer is not None:
                self._optimizer.load_state_dict(self._saved_optimizer)
        return self._optimizer

    def optimizer_state(self):
        """For state_dict(): the optimizer's state (or the resumed one, before the first round)."""
        return self._optimizer.state_dict() if self._optimizer is not None else self._saved_optimizer

    def restore_optimizer(self, state) -> None:
        """For load_state_dict(): kept until the optimizer is made."""
        self._saved_optimizer = state

    def round_queries(self, planned: int) -> int:
        """Queries in one round, given batches_per_round * query_batch (an attack may round it to its steps)."""
        return planned

    def run_round(self, query, stolen: torch.nn.Module, queries: int) -> None:
        """Spend exactly `queries` queries through query(x) -> answers, and train `stolen` on them."""
        raise NotImplementedError

    def restore_history(self, xs: list, answers: list) -> None:
        """On resume, after load_state_dict: every batch answered so far (only if keeps_queries)."""


class SequentialPoolAttack(PoolAttack):
    """Walks through a fixed, seeded sequence of images (the pool a subclass builds)."""

    def __init__(self, ctx: AttackContext):
        super().__init__(ctx)
        self.images = self._pool()
        self.position = 0

    def select(self, n: int, stolen=None) -> torch.Tensor:
        batch = self.images[self.position:self.position + n]
        self.position += len(batch)
        return batch

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        position = state.get("position")
        if not isinstance(position, int) or not 0 <= position <= len(self.images):
            raise UserError(f"saved attack state has position {position!r}, outside the pool of {len(self.images)}")
        self.position = position


class ScoredPoolAttack(PoolAttack):
    """Active learning: the unqueried pool images that score highest under the current stolen model."""

    def __init__(self, ctx: AttackContext):
        super().__init__(ctx)
        self.images = self._pool()
        self.used = torch.zeros(len(self.images), dtype=torch.bool)

    def build_pool(self) -> torch.Tensor:
        return self.ctx.pool_x

    @classmethod
    def max_budget(cls, pool_size: int) -> int | None:
        return pool_size if cls.build_pool is ScoredPoolAttack.build_pool else None

    def score(self, logprobs: torch.Tensor) -> torch.Tensor:
        """Higher is chosen first; logprobs is the stolen model's log-softmax of each candidate."""
        raise NotImplementedError

    def select(self, n: int, stolen: torch.nn.Module) -> torch.Tensor:
        free = (~self.used).nonzero().flatten()
        logprobs = F.log_softmax(predict_logits(stolen, self.images[free], self.ctx.device), dim=1)
        scores = self.score(logprobs).double()
        if not torch.isfinite(scores).all():
            scores = torch.nan_to_num(scores, nan=-math.inf)
        chosen = free[self.order(scores, logprobs)[:n]]
        self.used[chosen] = True
        return self.images[chosen]

    def order(self, scores: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
        """The free candidates' indices, first chosen first: highest score first; stable, so ties go to
        the lower pool index and a run repeats exactly."""
        return torch.sort(scores, descending=True, stable=True).indices

    def state_dict(self) -> dict:
        return {"used": self.used.clone()}

    def load_state_dict(self, state: dict) -> None:
        used = state.get("used")
        if not isinstance(used, torch.Tensor) or used.shape != self.used.shape or used.dtype != torch.bool:
            raise UserError(f"saved attack state does not fit the pool of {len(self.used)} images")
        self.used = used.clone()


ATTACKS: dict = {}


def register(cls):
    """Class decorator: add an attack to the registry under cls.name."""
    ATTACKS[cls.name] = cls
    return cls


def options_for(name: str, values) -> Any:
    """The mode's Options built from a mapping of settings (only its own fields are read), or None."""
    cls = ATTACKS.get(name)
    if cls is None or cls.Options is None:
        return None
    return cls.Options(**{f.name: values[f.name] for f in dataclasses.fields(cls.Options)})


def create(name: str, ctx: AttackContext) -> Attack:
    """Build a registered attack; a ConfigError lists the valid names."""
    if name not in ATTACKS:
        raise unknown_name("mode", name, ATTACKS)
    return ATTACKS[name](ctx)
