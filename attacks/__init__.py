"""Attacks behind one contract and a registry; importing the package registers every attack."""
from attacks.base import (
                          ATTACKS,
                          Attack,
                          AttackContext,
                          PoolAttack,
                          ScoredPoolAttack,
                          SequentialPoolAttack,
                          TrainingAttack,
                          create,
                          options_for,
                          register,
)

# each module registers its attack; they import from attacks.base, which imports none of them
from attacks import active, copycat, dfme, jacobian, knockoff, mixmatch, standard, worstcase  # noqa: E402,F401  isort: skip

__all__ = ["ATTACKS", "Attack", "AttackContext", "PoolAttack", "ScoredPoolAttack", "SequentialPoolAttack",
           "TrainingAttack", "create", "options_for", "register"]
