"""Exact k-nearest-neighbour vote histograms, fast on the CPU.

Private kNN (the paper's accountant) lets the k training points nearest to a query, in the victim's
log-softmax space, vote with their true labels. The search is exact. Per chunk of queries:
  1. squared distances to a fixed random sample of m training points give, per query, a threshold
     (the r-th smallest sample distance, r chosen so that about 2k full-set points fall below it);
  2. one GEMM gives the squared distances to every training point, into a reused buffer (one per
     thread, so one voter serves concurrent requests);
  3. the points under the threshold are compacted (about 2k per query) and the exact k smallest
     among them vote. A query whose threshold caught fewer than k points falls back to a full top-k.
So the expensive full-width selection runs only over ~2k candidates instead of all n points.
"""
from __future__ import annotations

import math
import threading

import torch

from common.errors import ConfigError

CHUNK = 256  # queries per distance block: 256 x 60k floats = 61 MB, allocated once and reused
SAMPLE = 4096  # training points in the threshold sample
OVERSAMPLE = 1.3  # expected candidates per query, as a multiple of k
MARGIN_SD = 3.0  # the threshold's rank is pushed this many binomial standard deviations up


class KnnVoter:
    """Vote histograms of the k nearest training points (exact, Euclidean)."""

    def __init__(self, reps: torch.Tensor, labels: torch.Tensor, *, k: int, num_classes: int, seed: int = 0):
        if k < 1 or k > len(reps):
            raise ConfigError(f"k must lie in 1..{len(reps)} (the number of training points), got {k}")
        self.reps = reps.detach().float().contiguous()
        self.reps_t = self.reps.t().contiguous()
        self.labels = labels.long()
        self.k, self.num_classes = k, num_classes
        self.sq = (self.reps * self.reps).sum(1)
        n = len(self.reps)
        m = min(SAMPLE, n)
        gen = torch.Generator().manual_seed(seed)
        self.sample_t = self.reps[torch.randperm(n, generator=gen)[:m]].t().contiguous()
        self.sample_sq = (self.sample_t * self.sample_t).sum(0)
        expected = OVERSAMPLE * k * m / n
        self._scratch = threading.local()  # each thread's own distance and mask buffers: safe to share
        self.rank = m if m == n else min(m, max(1, int(math.ceil(expected + MARGIN_SD * math.sqrt(expected)))))

    def _full(self, q: torch.Tensor) -> torch.Tensor:
        d = torch.addmm(self.sq.unsqueeze(0), q, self.reps_t, alpha=-2.0)
        return self.labels[d.topk(self.k, dim=1, largest=False).indices]

    def _buffers(self, rows: int) -> tuple:
        """This thread's reusable (distance, mask) blocks, allocated at its first call."""
        scratch = self._scratch
        if getattr(scratch, "dist", None) is None:
            scratch.dist = torch.empty((CHUNK, len(self.reps)))
            scratch.mask = torch.empty((CHUNK, len(self.reps)), dtype=torch.bool)
        return scratch.dist[:rows], scratch.mask[:rows]

    def nearest_labels(self, q: torch.Tensor) -> torch.Tensor:
        """Labels of the k nearest training points of each query: (N, k)."""
        q = q.detach().float()
        n = len(self.reps)
        if self.rank >= self.sample_t.shape[1] or 4 * self.k >= n:
            return torch.cat([self._full(q[s:s + CHUNK]) for s in range(0, len(q), CHUNK)])
        out = torch.empty((len(q), self.k), dtype=torch.long)
        for s in range(0, len(q), CHUNK):
            qc = q[s:s + CHUNK]
            rows = len(qc)
            ds = torch.addmm(self.sample_sq.unsqueeze(0), qc, self.sample_t, alpha=-2.0)
            thr = ds.topk(self.rank, dim=1, largest=False, sorted=False).values.amax(1, keepdim=True)
            dist, mask = self._buffers(rows)
            torch.addmm(self.sq.unsqueeze(0), qc, self.reps_t, alpha=-2.0, out=dist)
            torch.le(dist, thr, out=mask)
            r, c = mask.nonzero(as_tuple=True)
            counts = torch.bincount(r, minlength=rows)
            width = max(int(counts.max()), self.k)
            flat = r * width + (torch.arange(len(r)) - (torch.cumsum(counts, 0) - counts)[r])
            vals = torch.full((rows * width,), float("inf"))
            labs = torch.zeros((rows * width,), dtype=torch.long)
            vals[flat] = dist.view(-1)[r * n + c]
            labs[flat] = self.labels[c]
            vals, labs = vals.view(rows, width), labs.view(rows, width)
            chosen = labs.gather(1, vals.topk(self.k, dim=1, largest=False, sorted=False).indices)
            short = (counts < self.k).nonzero().flatten()
            if len(short):
                chosen[short] = self._full(qc[short])
            out[s:s + rows] = chosen
        return out

    def votes(self, q: torch.Tensor) -> torch.Tensor:
        """Vote histograms (N, num_classes) of int64 counts that sum to k."""
        lab = self.nearest_labels(q)
        hist = torch.zeros((len(lab), self.num_classes), dtype=torch.long)
        return hist.scatter_add_(1, lab, torch.ones_like(lab))
