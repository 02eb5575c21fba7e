"""worstcase: an attacker who knows the defence and sends its cheapest queries first, to look legitimate.

It knows the defender's cost measure and its parameters (--cost_measure, k, sigma, delta), not the
victim's data or answers to unsent queries. So it prices each unqueried candidate of its in-distribution
pool with the defender's own formula, applied to its stolen model's posterior as a stand-in for the
victim's: entropy and gap directly; private kNN (knn, knn_eps) as the GNMax epsilon of a vote
histogram of k votes split as the stolen model's probabilities; PATE (pate, pate_eps) likewise, with one
vote per teacher at the teachers' sigma. The cheapest candidates go first.
This is the attack the defence must be judged against.
"""
from __future__ import annotations

import torch

from attacks.base import ScoredPoolAttack, register
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
