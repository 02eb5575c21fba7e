"""Active learning on the stolen model's predictions over the attacker's in-distribution pool.

entropy     the most uncertain samples first (highest Shannon entropy of the stolen model's softmax);
entropyrev  the least uncertain first;
gap         the smallest gap between the two largest probabilities first.
"""
from __future__ import annotations

from attacks.base import ScoredPoolAttack, register
from privacy.accountants import shannon_entropy as entropy  # the defender's own formulas
from privacy.accountants import top2_gap


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
