"""Client solvers that use every core: worker processes scan disjoint nonce ranges.

solve_target() solves pow1 challenges (sha256 / scrypt); solve_hashcash() mints hashcash stamps with
the Python SHA-1 scanner or, with solver='native', with the hashcash tool (one process per worker).
Each returns the solution and the number of evaluations tried.
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import subprocess
import time

from pow import hashcash, puzzles

SOLVERS = ("python", "native")
MIN_CHUNK = {"sha256": 4096, "scrypt": 8, "sha1": 4096}  # evaluations per task, at least
MAX_CHUNK = {"sha256": 1 << 16, "scrypt": 256, "sha1": 1 << 16}  # ... and at most (~50 ms of work)


def default_workers() -> int:
    return os.cpu_count() or 1


def _scan_target(args):
    kind, text, index, start, count, limit = args
    if kind == "sha256":
        base = hashlib.sha256(f"{text}|{index}|".encode())
        for nonce in range(start, start + count):
            h = base.copy()
            h.update(b"%x" % nonce)
            if int.from_bytes(h.digest(), "big") < limit:
                return nonce, nonce - start + 1
        return None, count
    for nonce in range(start, start + count):
        if int.from_bytes(puzzles.digest(kind, puzzles.sub_input(text, index, nonce)), "big") < limit:
            return nonce, nonce - start + 1
    return None, count


def _scan_hashcash(args):
    stamp_prefix, bits, start, count = args
    return hashcash.search(stamp_prefix, bits, start, count), count


class Solver:
    """A pool of worker processes kept for many puzzles (use as a context manager)."""

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or default_workers())
        self._pool = None

    def __enter__(self):
        if self.workers > 1:
            self._pool = mp.get_context("fork").Pool(self.workers)
        return self

    def __exit__(self, *exc):
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    def _map(self, fn, tasks):
        return self._pool.map(fn, tasks) if self._pool is not None else [fn(t) for t in tasks]

    @staticmethod
    def _chunk(kind: str, expected: float, workers: int) -> int:
        return int(min(MAX_CHUNK[kind], max(MIN_CHUNK[kind], expected / workers / 4)))

    def solve_target(self, challenge: str) -> tuple:
        """(solution text, evaluations tried) for a pow1 challenge."""
        ch = puzzles.parse(challenge)
        if isinstance(ch, str):
            raise ValueError(ch)
        limit = puzzles.threshold(ch.work, ch.subs)
        chunk = self._chunk(ch.kind, ch.work / ch.subs, self.workers)
        nonces, tried, start = [], 0, 0
        for index in range(ch.subs):
            found = None
            while found is None:
                tasks = [(ch.kind, challenge, index, start + w * chunk, chunk, limit) for w in range(self.workers)]
                start += self.workers * chunk
                for nonce, count in self._map(_scan_target, tasks):
                    tried += count
                    if nonce is not None and found is None:
                        found = nonce
            nonces.append(found)
        return f"{challenge}|{','.join(f'{n:x}' for n in nonces)}", tried

    def solve_hashcash(self, resource: str, bits: int, *, solver: str = "python") -> tuple:
        """(stamp, evaluations tried or expected) for a hashcash stamp of `bits` bits."""
        if solver == "native":
            return self._native(resource, bits), 2.0 ** bits
        if solver != "python":
            raise ValueError(f"unknown solver '{solver}'; valid solvers: {', '.join(SOLVERS)}")
        stamp_prefix = hashcash.prefix(bits, resource)
        chunk = self._chunk("sha1", 2.0 ** bits, self.workers)
        start, tried = 0, 0
        while True:
            tasks = [(stamp_prefix, bits, start + w * chunk, chunk) for w in range(self.workers)]
            start += self.workers * chunk
            for stamp, count in self._map(_scan_hashcash, tasks):
                tried += count
                if stamp is not None:
                    return stamp, tried

    def _native(self, resource: str, bits: int) -> str:
        """Race `workers` hashcash processes (each with its own random field); the first stamp wins."""
        tool = hashcash.native_tool()
        if tool is None:
            raise RuntimeError("the hashcash tool is not installed (Debian package hashcash); use --solver python")
        procs = [subprocess.Popen([tool, "-m", "-q", "-b", str(bits), "-r", resource], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True) for _ in range(self.workers)]
        try:
            while True:
                for p in procs:
                    if p.poll() is not None:
                        out = p.stdout.read().strip()
                        if p.returncode == 0 and out:
                            return out
                        raise RuntimeError(f"the hashcash tool failed (exit {p.returncode})")
                time.sleep(0.0005)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()


def measure_rate(kind: str, *, workers: int = 1, seconds: float = 0.5) -> float:
    """Evaluations per second of our solver for kind in sha1, sha256, scrypt (nothing is found)."""
    count = {"sha1": 1 << 15, "sha256": 1 << 15, "scrypt": 32}[kind]
    tasks_per_round = max(1, workers)
    with Solver(workers) as s:
        fn = _scan_hashcash if kind == "sha1" else _scan_target
        make = ((lambda i: ("1:60:261129:rate::x:", 60, i * count, count)) if kind == "sha1" else
                (lambda i: (kind, "rate", 0, i * count, count, 0)))
        s._map(fn, [make(0)])  # warm up the workers
        done, start, i = 0, time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            s._map(fn, [make(i + w) for w in range(tasks_per_round)])
            i += tasks_per_round
            done += tasks_per_round * count
        return done / (time.perf_counter() - start)
