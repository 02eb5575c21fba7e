"""The spent set: each challenge or stamp is redeemed once, until it expires.

ReplayGuard is safe to share between threads. A claim is one dict look-up and one heap push under a
lock (O(log n)); expired entries leave the heap in expiry order, a few at each claim, so no claim ever
rebuilds the whole set.
"""
from __future__ import annotations

import heapq
import math
import threading
import time


class ReplayGuard:
    """Remembers redeemed tokens until they expire, so that each is accepted exactly once."""

    def __init__(self, clock=time.time):
        self._clock = clock
        self._lock = threading.Lock()
        self._expires: dict = {}
        self._heap: list = []
        self._horizon = -math.inf  # the latest time pruned up to

    def claim(self, token: str, expires: float, now: float | None = None) -> bool:
        """True for the first claim of an unexpired token; False for a replay, or a token already expired."""
        now = self._clock() if now is None else now
        if not (math.isfinite(expires) and math.isfinite(now)) or expires < now:
            return False
        with self._lock:
            self._prune(now)
            # Tokens that expired before the latest time seen may already be pruned: a clock that steps
            # back (or an older `now`) must not make them redeemable again.
            if expires < self._horizon or token in self._expires:
                return False
            self._expires[token] = expires
            heapq.heappush(self._heap, (expires, token))
            return True

    def _prune(self, now: float) -> None:
        self._horizon = max(self._horizon, now)
        heap, live = self._heap, self._expires
        while heap and heap[0][0] < now:
            expires, token = heapq.heappop(heap)
            if live.get(token) == expires:
                del live[token]

    def __len__(self) -> int:
        with self._lock:
            return len(self._expires)

    def __contains__(self, token: str) -> bool:
        with self._lock:
            return token in self._expires
