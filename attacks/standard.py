"""standard: a legitimate user; random in-distribution queries from the pool, in random order."""
from __future__ import annotations

import torch

from attacks.base import SequentialPoolAttack, register


@register
class StandardAttack(SequentialPoolAttack):
    name = "standard"

    @classmethod
    def max_budget(cls, pool_size: int) -> int | None:
        return pool_size

    def build_pool(self) -> torch.Tensor:
        order = torch.randperm(len(self.ctx.pool_x), generator=torch.Generator().manual_seed(self.ctx.seed))
        return self.ctx.pool_x[order]
