"""Query-selection strategies behind one base class and a registry."""
from attacks.base import ATTACKS, Attack, AttackContext, create

__all__ = ["ATTACKS", "Attack", "AttackContext", "create"]
