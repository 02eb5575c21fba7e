"""What makes an attacker's private-kNN cost grow faster than a legitimate user's: a factorial experiment.

The paper's accountant lets the k training points nearest to a query (in the victim's log-softmax space)
vote with their labels; the query's cost is the data-dependent GNMax epsilon of that histogram. Three
choices differ between our runs and the authors', and each may change how fast an out-of-distribution
attacker's cost grows against an in-distribution user's:

  * the victim (which model's log-softmax space the neighbours are found in);
  * the kNN's training set (its size: 3,000 images on mnist-5k, 60,000 on MNIST);
  * the attacker's out-of-distribution pool (photo crops, or natural images such as CIFAR-10).

`measure` runs every combination: the same random in-distribution queries (from the kNN set's own
attacker pool, the `standard` user) and out-of-distribution queries (the pool, as copycat and knockoff
draw them) are voted on, and each combination gives the mean epsilon per query of both and their ratio.
A fourth factor is the GNMax noise sigma: the same votes priced at each. `ceiling` gives, per sigma, the
largest growth the accountant allows at all (a tie over a unanimous vote): at the paper's sigma = 28 and
delta = 1e-5, every query costs between 0.161 and 0.244, so no attacker's cost can grow more than 1.51x
faster, while the authors' MNIST copycat paid 0.530 per query.
`effects` then reads the main effect of each factor: the mean growth at each of its levels, averaged
over the other factors' levels.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from common import checks
from common.errors import ConfigError
from data.ood import ood_pool
from data.registry import load_splits
from models.checkpoint import load_victim, read_victim_meta
from models.oracle import Victim
from privacy.accountants import knn_costs
from privacy.knn import KnnVoter
from privacy.rdp import MIN_SIGMA

FACTORS = ("victim", "knn_set", "pool", "sigma")


@dataclass(frozen=True)
class GrowthConfig:
    """The accountant and the streams: `queries` of each kind, k neighbours, the GNMax sigmas (a factor
    too: the votes are counted once and priced at each) and delta."""
    queries: int = 2048
    k: int = 300
    sigmas: tuple = (28.0, 10.0)
    delta: float = 1e-5
    seed: int = 0

    def __post_init__(self):
        checks.whole("--queries", self.queries, lo=1)
        checks.whole("--k", self.k, lo=1)
        if not self.sigmas:
            raise ConfigError("--sigmas needs at least one sigma")
        for sigma in self.sigmas:
            checks.finite("--sigmas", sigma, lo=MIN_SIGMA, hi=1e6)
        checks.finite("--delta", self.delta, lo=0, hi=1, lo_open=True, hi_open=True)


def ceiling(k: int, num_classes: int, *, sigma: float, delta: float) -> dict:
    """The cheapest and the dearest query the accountant can price: k unanimous votes, and k votes split
    evenly over two classes (a tie: the data-independent GNMax bound). Their ratio is the largest growth
    any attacker can reach, whatever it sends."""
    votes = np.zeros((2, num_classes), dtype=np.int64)
    votes[0, 0], votes[1, 0], votes[1, 1] = k, k - k // 2, k // 2
    eps = knn_costs(votes, sigma=sigma, delta=delta)[0]
    return {"least_eps": float(eps[0]), "most_eps": float(eps[1]), "most_growth": float(eps[1] / eps[0])}


def _victim(path: Path, spec, device) -> tuple:
    """The checkpoint's model, loaded for the kNN set's input shape, and its metadata."""
    meta = read_victim_meta(path)
    trained_on = meta.get("dataset", spec.name)
    model, meta = load_victim(path, dataclasses.replace(spec, name=trained_on), device=device)
    return Victim(model, device=device), meta


def measure(victims: dict, knn_sets: list, pools: list, *, data_dir, config: GrowthConfig,
            device=torch.device("cpu"), progress: bool = True) -> pd.DataFrame:
    """One row per (victim, kNN set, pool): the mean epsilon per query of the in-distribution and the
    out-of-distribution stream, and their ratio (`growth`). `victims` maps a label to a checkpoint."""
    rows = []
    combos = list(itertools.product(knn_sets, victims, pools))
    bar = tqdm(combos, desc="cost growth", leave=False, disable=not progress)
    cache = {}
    for knn_set, label, pool in bar:
        if knn_set not in cache:
            splits = load_splits(knn_set, data_dir)
            n = min(config.queries, len(splits.pool_x))
            order = np.random.default_rng(config.seed).permutation(len(splits.pool_x))[:n]
            cache[knn_set] = (splits, splits.pool_x[order], {})
        splits, legit, reps = cache[knn_set]
        k = min(config.k, len(splits.victim_y))  # a training set smaller than k: every point votes
        oracle, meta = _victim(Path(victims[label]), splits.spec, device)
        if label not in reps:
            reps[label] = KnnVoter(oracle.representations(splits.victim_x), splits.victim_y, k=k,
                                   num_classes=splits.spec.num_classes, seed=config.seed)
        voter = reps[label]
        ood = ood_pool(pool, len(legit), splits.spec, seed=config.seed, data_dir=data_dir)
        votes = {kind: voter.votes(oracle.log_probs(images)).numpy() for kind, images in (("legit", legit),
                                                                                           ("ood", ood))}
        for sigma in config.sigmas:
            costs = {kind: float(knn_costs(v, sigma=sigma, delta=config.delta)[0].mean()) for kind, v in votes.items()}
            rows.append({"victim": label, "victim_trained_on": meta.get("dataset"),
                         "victim_accuracy": meta.get("test_accuracy"), "knn_set": knn_set,
                         "knn_size": len(splits.victim_y), "k": k, "pool": str(pool), "sigma": float(sigma),
                         "queries": len(legit), "legit_eps_per_query": costs["legit"],
                         "ood_eps_per_query": costs["ood"],
                         "growth": costs["ood"] / costs["legit"] if costs["legit"] > 0 else float("inf"),
                         "most_growth": ceiling(k, splits.spec.num_classes, sigma=sigma,
                                                delta=config.delta)["most_growth"]})
    return pd.DataFrame(rows)


def effects(frame: pd.DataFrame) -> pd.DataFrame:
    """Each factor's main effect: per level, the mean legitimate and OOD cost per query and the mean growth
    over the other factors' levels; `swing` is the factor's largest over smallest mean growth."""
    rows = []
    for factor in FACTORS:
        means = frame.groupby(factor, sort=False)[["legit_eps_per_query", "ood_eps_per_query", "growth"]].mean()
        swing = float(means["growth"].max() / means["growth"].min()) if len(means) > 1 else 1.0
        for level, r in means.iterrows():
            rows.append({"factor": factor, "level": level, "legit_eps_per_query": r["legit_eps_per_query"],
                         "ood_eps_per_query": r["ood_eps_per_query"], "growth": r["growth"], "swing": swing})
    return pd.DataFrame(rows)
