"""copycat (Correia-Silva et al. 2018): natural non-problem-domain images, labelled by the victim."""
from __future__ import annotations

import torch

from attacks.base import SequentialPoolAttack, register
from data.ood import ood_pool


@register
class CopycatAttack(SequentialPoolAttack):
    name = "copycat"
    uses_ood_pool = True

    def build_pool(self) -> torch.Tensor:
        return ood_pool(self.ctx.ood_pool, self.ctx.budget, self.ctx.spec, seed=self.ctx.seed,
                        data_dir=self.ctx.data_dir)
