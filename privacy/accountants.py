"""Stateful accountants: each turns the victim's answers into per-query costs and keeps running totals.

Columns they log (all cumulative over the queries answered so far):
  privacy_cost  the paper's measure: the sum of each query's own private-kNN epsilon;
  privacy_eps   the (epsilon, delta) of all queries together, from the summed RDP (true composition);
  pate_cost     the sum of each query's own epsilon under GNMax over a PATE teacher ensemble's votes
                (the authors' PATE path logged this sum);
  pate_eps      the composed (epsilon, delta) of all queries under the same teachers;
  entropy_cost  the sum of the normalised Shannon entropy of the victim's softmax (0 = certain, 1 = uniform);
  gap_cost      the sum of 1 - (top-1 probability - top-2 probability).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from common import checks
from common.errors import ConfigError, unknown_name
from privacy import rdp as rdpmath
from privacy.knn import KnnVoter

#: --cost_measure name -> the cumulative column the calibrator reads
COST_MEASURES = {"knn": "privacy_cost", "knn_eps": "privacy_eps", "entropy": "entropy_cost", "gap": "gap_cost",
                 "pate": "pate_cost", "pate_eps": "pate_eps"}
PATE_MEASURES = ("pate", "pate_eps")  # need a teacher ensemble
#: GNMax sigma per PATE teacher: the paper's 10 for 250 MNIST/SVHN teachers and 2 for 50 CIFAR10 teachers
PATE_SIGMA_PER_TEACHER = 0.04


def pate_sigma(teachers: int, given: float | None = None) -> float:
    """--pate_sigma when given, else the paper's noise-to-votes ratio for this many teachers."""
    return float(given) if given is not None else PATE_SIGMA_PER_TEACHER * teachers
COST_COLUMNS = tuple(COST_MEASURES.values())


def cost_column(measure: str) -> str:
    if measure not in COST_MEASURES:
        raise unknown_name("cost measure", measure, COST_MEASURES)
    return COST_MEASURES[measure]


def knn_costs(votes, *, sigma: float, delta: float, orders=rdpmath.DEFAULT_ORDERS, cap: bool = False,
              conversion: str = "classic"):
    """Per-query epsilon and RDP for vote histograms; identical histograms are computed once."""
    votes = np.asarray(votes)
    uniq, inverse = np.unique(votes, axis=0, return_inverse=True)
    eps, rdp = rdpmath.eps_per_query(uniq, sigma=sigma, delta=delta, orders=orders, cap=cap,
                                     conversion=conversion)
    inverse = inverse.reshape(-1)
    return eps[inverse], rdp[inverse]


def cumulative_costs(votes, *, sigma: float, delta: float, orders=rdpmath.DEFAULT_ORDERS, cap: bool = False,
                     conversion: str = "classic") -> dict:
    """For each row of a vote table: its epsilon, the running privacy_cost and the running privacy_eps."""
    eps, rdp = knn_costs(votes, sigma=sigma, delta=delta, orders=orders, cap=cap, conversion=conversion)
    composed, _ = rdpmath.rdp_to_eps(np.cumsum(rdp, axis=0), orders=orders, delta=delta, conversion=conversion)
    return {"eps": eps, "privacy_cost": np.cumsum(eps), "privacy_eps": composed}


class Accountant:
    """Base class: add() a batch of victim log-probabilities (and, if needs_images, the query images),
    read totals()."""
    columns: tuple = ()
    needs_images = False

    def add(self, logprobs: torch.Tensor, images: torch.Tensor | None = None) -> dict:
        """Account one answered batch; returns the per-query cost array of each column."""
        raise NotImplementedError

    def totals(self) -> dict:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)

    def absorb(self, state: dict) -> None:
        """Add another accountant's state (of the same kind and settings): costs are sums, so the totals
        of two batches accounted apart equal those of both accounted together."""
        raise NotImplementedError


class GnmaxAccountant(Accountant):
    """GNMax RDP of each query's vote histogram: the running sum of per-query epsilons, and the epsilon of
    the summed RDP (composition). Subclasses say where the votes come from."""
    columns = ("", "")  # (sum of per-query epsilons, composed epsilon)

    def __init__(self, *, sigma: float, delta: float, cap: bool = False, conversion: str = "classic",
                 orders=rdpmath.DEFAULT_ORDERS):
        self.sigma, self.delta, self.cap, self.conversion = sigma, delta, cap, conversion
        self.orders = np.asarray(orders, dtype=np.float64)
        self.cost = 0.0
        self.rdp_sum = np.zeros(len(self.orders))

    def votes(self, logprobs: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def add(self, logprobs, images=None):
        eps, rdp = knn_costs(self.votes(logprobs, images).numpy(), sigma=self.sigma, delta=self.delta,
                             orders=self.orders, cap=self.cap, conversion=self.conversion)
        self.cost += float(eps.sum())
        self.rdp_sum += rdp.sum(0)
        return {self.columns[0]: eps}

    def totals(self):
        if not self.rdp_sum.any():
            return {self.columns[0]: 0.0, self.columns[1]: 0.0}
        eps, _ = rdpmath.rdp_to_eps(self.rdp_sum, orders=self.orders, delta=self.delta, conversion=self.conversion)
        return {self.columns[0]: self.cost, self.columns[1]: float(eps)}

    def state_dict(self):
        return {"cost": self.cost, "rdp_sum": self.rdp_sum.tolist()}  # plain floats: loadable weights_only

    def load_state_dict(self, state):
        rdp_sum = np.array(state["rdp_sum"], dtype=np.float64)
        if rdp_sum.shape != self.orders.shape or not np.isfinite(rdp_sum).all():
            raise ConfigError(f"saved RDP sums have shape {rdp_sum.shape}, expected {self.orders.shape}, all finite")
        self.cost, self.rdp_sum = float(state["cost"]), rdp_sum

    def absorb(self, state):
        other = type(self).__new__(type(self))
        other.orders = self.orders
        GnmaxAccountant.load_state_dict(other, state)  # checked: shape and finiteness
        self.cost += other.cost
        self.rdp_sum = self.rdp_sum + other.rdp_sum


class KnnAccountant(GnmaxAccountant):
    """Private kNN: the k nearest training points (victim log-softmax space) vote; GNMax RDP per query."""
    columns = ("privacy_cost", "privacy_eps")

    def __init__(self, voter: KnnVoter, **gnmax):
        super().__init__(**gnmax)
        self.voter = voter

    def votes(self, logprobs, images):
        return self.voter.votes(logprobs)


class PateAccountant(GnmaxAccountant):
    """PATE: a teacher ensemble votes on the query image itself; GNMax RDP per query.

    `ensemble_votes(images) -> (B, C)` histograms (models.teachers.TeacherEnsemble.votes), injected so
    that this module needs no model code."""
    columns = ("pate_cost", "pate_eps")
    needs_images = True

    def __init__(self, ensemble_votes, **gnmax):
        super().__init__(**gnmax)
        self.ensemble_votes = ensemble_votes

    def votes(self, logprobs, images):
        if images is None:
            raise ValueError("the PATE accountant prices the query images, but none were passed")
        return self.ensemble_votes(images)


class _SumAccountant(Accountant):
    """A leakage measure that is a plain sum of a per-query score."""
    column = ""

    def __init__(self):
        self.columns = (self.column,)
        self.total = 0.0

    def score(self, logprobs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def add(self, logprobs, images=None):
        s = self.score(logprobs.float()).double().numpy()
        self.total += float(s.sum())
        return {self.column: s}

    def totals(self):
        return {self.column: self.total}

    def state_dict(self):
        return {"total": self.total}

    def load_state_dict(self, state):
        self.total = checks.finite(f"saved {self.column}", state["total"], lo=0)

    def absorb(self, state):
        self.total += checks.finite(f"saved {self.column}", state["total"], lo=0)


def shannon_entropy(logprobs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row's distribution; 0 * log 0 counts as 0."""
    return -(logprobs.exp() * logprobs).nan_to_num(0.0).sum(1)


def top2_gap(logprobs: torch.Tensor) -> torch.Tensor:
    """The largest probability minus the second largest, per row."""
    top2 = logprobs.exp().topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


class EntropyAccountant(_SumAccountant):
    """Normalised Shannon entropy H(p) / log C of the victim's softmax, per query."""
    column = "entropy_cost"

    def score(self, logprobs):
        return (shannon_entropy(logprobs) / math.log(logprobs.shape[1])).clamp_(0.0, 1.0)


class GapAccountant(_SumAccountant):
    """1 minus the gap between the two largest softmax probabilities, per query."""
    column = "gap_cost"

    def score(self, logprobs):
        return 1.0 - top2_gap(logprobs)


class Ledger:
    """All accountants of one client; the oracle feeds it every answered batch."""

    def __init__(self, accountants):
        self.accountants = list(accountants)

    def add(self, logprobs: torch.Tensor, images: torch.Tensor | None = None) -> dict:
        per_query = {}
        for acc in self.accountants:
            per_query.update(acc.add(logprobs, images))
        return per_query

    @property
    def columns(self) -> tuple:
        return tuple(c for acc in self.accountants for c in acc.columns)

    def totals(self) -> dict:
        out = {}
        for acc in self.accountants:
            out.update(acc.totals())
        return out

    def state_dict(self) -> list:
        return [acc.state_dict() for acc in self.accountants]

    def load_state_dict(self, states: list) -> None:
        self._check(states)
        for acc, state in zip(self.accountants, states):
            acc.load_state_dict(state)

    def absorb(self, states: list) -> None:
        """Add another ledger's state_dict (same accountants) to this one: one batch into an account."""
        self._check(states)
        for acc, state in zip(self.accountants, states):
            acc.absorb(state)

    def _check(self, states) -> None:
        if not isinstance(states, list) or len(states) != len(self.accountants) \
                or not all(isinstance(s, dict) for s in states):
            raise ConfigError(f"a saved ledger must be a list of {len(self.accountants)} accountant states")


ACCOUNTANTS = {
    "knn": lambda *, voter, **gnmax: KnnAccountant(voter, **gnmax),
    "pate": lambda *, ensemble_votes, **gnmax: PateAccountant(ensemble_votes, **gnmax),
    "entropy": lambda **_: EntropyAccountant(),
    "gap": lambda **_: GapAccountant(),
}


def create(name: str, **kwargs) -> Accountant:
    """Build a registered accountant; ValueError lists the valid names."""
    if name not in ACCOUNTANTS:
        raise unknown_name("accountant", name, ACCOUNTANTS)
    return ACCOUNTANTS[name](**kwargs)


#: --cost_measure name -> the accountant that logs its column
MEASURE_ACCOUNTANT = {"knn": "knn", "knn_eps": "knn", "entropy": "entropy", "gap": "gap", "pate": "pate",
                      "pate_eps": "pate"}


def ledger_factory(reps: torch.Tensor, labels: torch.Tensor, *, num_classes: int, k: int, sigma: float,
                   delta: float, cap: bool = False, conversion: str = "classic", seed: int = 0, ensemble_votes=None,
                   pate_sigma: float | None = None, measures=None):
    """A function that makes fresh (zero) ledgers sharing one kNN voter: private kNN over `reps` (the
    victim's log-softmax of its own training set) with their true `labels`, entropy and gap; and, given
    `ensemble_votes(images) -> histograms` (a PATE teacher ensemble), GNMax over the teachers' votes at
    pate_sigma. The voter is safe to share between threads, so a server makes one ledger per batch.
    `measures` (cost measure names) keeps only the accountants those measures need (a server prices by
    one measure and logs others only where the operator asks); None keeps all."""
    wanted = None if measures is None else {MEASURE_ACCOUNTANT[cost_column(m) and m] for m in measures}
    if wanted is not None and "pate" in wanted and ensemble_votes is None:
        raise ConfigError(f"the measures {', '.join(measures)} include a PATE cost, which needs a teacher ensemble's "
                          f"votes; train one with train-teachers and give --teachers_path, or drop the PATE measure")
    voter = (KnnVoter(reps, labels, k=min(k, len(reps)), num_classes=num_classes, seed=seed)
             if wanted is None or "knn" in wanted else None)
    gnmax = dict(delta=delta, cap=cap, conversion=conversion)

    def make() -> Ledger:
        parts = []
        if voter is not None:
            parts.append(create("knn", voter=voter, sigma=sigma, **gnmax))
        parts += [create(name) for name in ("entropy", "gap") if wanted is None or name in wanted]
        if ensemble_votes is not None and (wanted is None or "pate" in wanted):
            parts.append(create("pate", ensemble_votes=ensemble_votes, sigma=pate_sigma, **gnmax))
        return Ledger(parts)
    return make


def build_ledger(reps: torch.Tensor, labels: torch.Tensor, **settings) -> Ledger:
    """One client's ledger (see ledger_factory); the extraction loop and a server build it the same way
    (the victim's forward pass stays with the caller)."""
    return ledger_factory(reps, labels, **settings)()
