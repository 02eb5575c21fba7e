"""Private-kNN cost speed: the fast exact path against the straightforward per-query loop, one run.

Workload (the issue's): 10,000 queries against 60,000 training points, k=300, 10 classes, in a
victim-like log-softmax space; plus one batch of 64 queries. Targets: at most 2 s and 15 ms.
The per-query loop (numpy distance, argpartition, per-query RDP) runs on --loop_queries queries and
is scaled to 10,000. Writes benchmarks/results/privacy.json.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.results_io import best_of, write_result
from privacy import rdp
from privacy.accountants import KnnAccountant
from privacy.knn import KnnVoter

SIGMA, DELTA, K, CLASSES = 28.0, 1e-5, 300, 10


def victim_like(n, gen):
    """Log-softmax outputs of a confident 10-class classifier: one dominant logit, noisy others."""
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    logits = torch.randn(n, CLASSES, generator=gen) * 3
    logits[torch.arange(n), y] += torch.randn(n, generator=gen) * 4 + 12
    return torch.log_softmax(logits, 1), y


def loop_costs(queries, reps, labels):
    """The straightforward way: one query at a time."""
    out = []
    for q in queries:
        d = ((reps - q) ** 2).sum(1)
        nearest = np.argpartition(d, K)[:K]
        votes = np.bincount(labels[nearest], minlength=CLASSES)
        eps, _ = rdp.eps_per_query(votes[None, :], sigma=SIGMA, delta=DELTA)
        out.append(eps[0])
    return np.array(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--train", type=int, default=60_000)
    ap.add_argument("--loop_queries", type=int, default=1_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    reps, labels = victim_like(args.train, gen)
    queries, _ = victim_like(args.queries, gen)
    voter = KnnVoter(reps, labels, k=K, num_classes=CLASSES)

    def fast():
        KnnAccountant(voter, sigma=SIGMA, delta=DELTA).add(queries)

    fast()  # warm-up: allocates the distance buffer once
    fast_best, fast_median = best_of(fast, args.repeats)
    batch = queries[:64]
    batch_best, batch_median = best_of(lambda: KnnAccountant(voter, sigma=SIGMA, delta=DELTA).add(batch),
                                       args.repeats * 5)
    sub = queries[:args.loop_queries].numpy().astype(np.float64)
    start = time.perf_counter()
    loop_eps = loop_costs(sub, reps.numpy().astype(np.float64), labels.numpy())
    loop_time = (time.perf_counter() - start) * args.queries / len(sub)
    acc = KnnAccountant(voter, sigma=SIGMA, delta=DELTA)
    fast_eps = acc.add(queries[:args.loop_queries])["privacy_cost"]
    result = {
        "workload": f"{args.queries} queries x {args.train} training points, k={K}, {CLASSES} classes",
        "threads": torch.get_num_threads(),
        "fast_s": round(fast_best, 3), "fast_median_s": round(fast_median, 3),
        "batch64_ms": round(batch_best * 1000, 2), "batch64_median_ms": round(batch_median * 1000, 2),
        "loop_s_scaled": round(loop_time, 2), "loop_queries_timed": len(sub),
        "speedup": round(loop_time / fast_best, 1),
        "max_abs_eps_difference": float(np.abs(loop_eps - fast_eps).max()),
        "targets": {"fast_s": 2.0, "batch64_ms": 15.0},
    }
    write_result("privacy", result)


if __name__ == "__main__":
    main()
