"""The attack contract: choose the next queries; optionally look at the answers.

Querying the oracle, training the stolen model and evaluating live once, in the extraction loop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from common.errors import UserError, unknown_name


MAX_POOL_BYTES = 2 ** 30  # a pool attack's images (uint8), at most: checked before anything is allocated


@dataclass(frozen=True)
class AttackContext:
    """What an attack may use: the dataset spec, the attacker's in-distribution pool, settings."""
    spec: Any
    pool_x: torch.Tensor
    budget: int
    seed: int
    data_dir: str = "data"
    ood_pool: str = "photos"


class Attack:
    """Base class. Subclasses implement select(); observe() is for adaptive attacks."""
    name = ""

    def __init__(self, ctx: AttackContext):
        self.ctx = ctx
        self.position = 0

    def select(self, n: int) -> torch.Tensor:
        """The next n query images (uint8 or float in [0, 1], shaped like the victim's input)."""
        raise NotImplementedError

    def observe(self, x: torch.Tensor, answers: torch.Tensor) -> None:
        """Called with every answered batch."""

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


class SequentialPoolAttack(Attack):
    """Walks through a fixed, seeded sequence of images (the pool a subclass builds)."""

    def __init__(self, ctx: AttackContext):
        super().__init__(ctx)
        need = ctx.budget * math.prod(ctx.spec.input_shape)
        if need > MAX_POOL_BYTES:
            raise UserError(f"attack '{self.name}' keeps one image per query: --budget {ctx.budget} on "
                            f"'{ctx.spec.name}' would need {need / 2 ** 30:.1f} GiB, more than the "
                            f"{MAX_POOL_BYTES / 2 ** 30:.0f} GiB allowed; lower --budget")
        self.images = self.build_pool()
        if ctx.budget > len(self.images):
            raise UserError(f"attack '{self.name}' can send at most {len(self.images)} distinct queries on "
                            f"'{ctx.spec.name}', but --budget is {ctx.budget}; lower --budget")

    def build_pool(self) -> torch.Tensor:
        raise NotImplementedError

    def select(self, n: int) -> torch.Tensor:
        batch = self.images[self.position:self.position + n]
        self.position += len(batch)
        return batch


ATTACKS: dict = {}


def register(cls):
    """Class decorator: add an attack to the registry under cls.name."""
    ATTACKS[cls.name] = cls
    return cls


def create(name: str, ctx: AttackContext) -> Attack:
    """Build a registered attack; ValueError lists the valid names."""
    if name not in ATTACKS:
        raise unknown_name("mode", name, ATTACKS)
    return ATTACKS[name](ctx)


# import the attacks so that they register themselves
from attacks import copycat, standard  # noqa: E402,F401  pylint: disable=wrong-import-position
