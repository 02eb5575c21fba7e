"""Active learning on the stolen model's predictions over the attacker's in-distribution pool.

entropy     the most uncertain samples first (highest Shannon entropy of the stolen model's softmax);
entropyrev  the least uncertain first;
gap         the smallest gap between the two largest probabilities first.
"""
from __future__ import annotations

import torch

from attacks.base import ScoredPoolAttack, register


def entropy(logprobs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row's distribution; 0 * log 0 counts as 0."""
    return -(logprobs.exp() * logprobs).nan_to_num(0.0).sum(1)


def top2_gap(logprobs: torch.Tensor) -> torch.Tensor:
    """The largest probability minus the second largest, per row."""
    top2 = logprobs.exp().topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


@register
class EntropyAttack(ScoredPoolAttack):
    name = "entropy"

    def score(self, logprobs):
        return entropy(logprobs)


@register
class EntropyRevAttack(ScoredPoolAttack):
    name = "entropyrev"

    def score(self, logprobs):
        return -entropy(logprobs)


@register
class GapAttack(ScoredPoolAttack):
    name = "gap"

    def score(self, logprobs):
        return -top2_gap(logprobs)
