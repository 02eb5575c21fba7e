"""worstcase: an attacker who knows the defence and sends its cheapest queries first, to look legitimate.
worstcaseood: the same knowledge with copycat's data: it holds no in-distribution image, only a natural
out-of-distribution pool (--ood_pool), --worstcaseood_candidates images of it, and sends the cheapest first,
in turn across the classes its stolen model predicts for them (the cheapest images alone are mostly of
one class, which teaches a copy nothing).

It knows the defender's cost measure and its parameters (--cost_measure, k, sigma, delta), not the
victim's data or answers to unsent queries. So it prices each unqueried candidate of its in-distribution
pool with the defender's own formula, applied to its stolen model's posterior as a stand-in for the
victim's: entropy and gap directly; private kNN (knn, knn_eps) as the GNMax epsilon of a vote
histogram of k votes split as the stolen model's probabilities; PATE (pate, pate_eps) likewise, with one
vote per teacher at the teachers' sigma. The cheapest candidates go first.
This is the attack the defence must be judged against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from attacks.base import MAX_POOL_BYTES, ScoredPoolAttack, register
from common import checks
from common.errors import UserError
from data.ood import ood_capacity, ood_pool
from privacy.accountants import PATE_MEASURES, EntropyAccountant, GapAccountant, knn_costs


def surrogate_cost(logprobs: torch.Tensor, measure: str, *, k: int, sigma: float, delta: float,
                   teachers: int = 0, pate_sigma: float = 10.0) -> torch.Tensor:
    """The defender's per-query cost of each row, with the stolen posterior in place of the victim's."""
    if measure == "entropy":
        return EntropyAccountant().score(logprobs).double()
    if measure == "gap":
        return GapAccountant().score(logprobs).double()
    if measure in PATE_MEASURES:
        k, sigma = teachers, pate_sigma
    votes = torch.round(logprobs.exp().double() * k).numpy()
    eps, _ = knn_costs(votes, sigma=sigma, delta=delta)
    return torch.as_tensor(eps)


@register
class WorstCaseAttack(ScoredPoolAttack):
    name = "worstcase"

    def score(self, logprobs):
        p = dict(self.ctx.cost_params)
        return -surrogate_cost(logprobs, self.ctx.cost_measure, **p)


@dataclass(frozen=True)
class WorstCaseOODOptions:
    worstcaseood_candidates: int = field(default=8192, metadata={
        "help": "out-of-distribution candidates held, the cheapest sent first (a dataset pool gives at most all it "
                "holds; fixed, so a resumed run chooses as the whole run did)"})

    def __post_init__(self):
        checks.whole("--worstcaseood_candidates", self.worstcaseood_candidates, lo=1, hi=10 ** 7)


@register
class WorstCaseOODAttack(WorstCaseAttack):
    name = "worstcaseood"
    Options = WorstCaseOODOptions
    uses_ood_pool = True

    @classmethod
    def max_budget(cls, pool_size: int) -> int | None:
        return WorstCaseOODOptions().worstcaseood_candidates  # its candidates (the default count)

    def build_pool(self) -> torch.Tensor:
        ctx = self.ctx
        want = (ctx.options or WorstCaseOODOptions()).worstcaseood_candidates
        if want * math.prod(ctx.spec.input_shape) > MAX_POOL_BYTES:
            raise UserError(f"--worstcaseood_candidates {want} images of {ctx.spec.name} would need more than "
                            f"{MAX_POOL_BYTES / 2 ** 30:.0f} GiB; lower it")
        held = ood_capacity(ctx.ood_pool, ctx.data_dir)
        return ood_pool(ctx.ood_pool, want if held is None else min(want, held), ctx.spec, seed=ctx.seed,
                        data_dir=ctx.data_dir)

    def order(self, scores: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
        """Every class's cheapest first, then every class's second cheapest, ...; cheaper first within a turn
        (the classes the stolen model predicts)."""
        classes = logprobs.argmax(1)
        order = super().order(scores, logprobs)  # cheapest first
        rank = torch.empty_like(order)  # each candidate's place among the candidates of its class
        for c in classes.unique():
            members = order[classes[order] == c]
            rank[members] = torch.arange(len(members))
        return order[torch.sort(rank[order], stable=True).indices]
