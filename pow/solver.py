"""Client solvers that use every core: worker processes race over disjoint nonce ranges.

Each worker scans blocks of nonces (worker w takes blocks w, w + W, w + 2W, ...) and checks a shared
'found' flag between blocks, so all stop within one block of the first solution. solve_target() solves
pow1 challenges (sha256 / scrypt); solve_hashcash() mints hashcash stamps with the Python SHA-1
scanner or, with solver='native', with the hashcash tool (one process per worker). Each returns the
solution and the number of evaluations tried.
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import subprocess
import time

from common.errors import ConfigError
from pow import hashcash, kinds, puzzles

SOLVERS = ("python", "native")
BLOCK = {"sha256": 2048, "sha1": 2048, "scrypt": 2}  # evaluations between looks at the shared flag (~2 ms)
NOT_FOUND = -1

_found = None  # the shared flag/value in each worker process (set by the pool initializer)


def default_workers() -> int:
    return os.cpu_count() or 1


def _scan_sha1(task, start, count):
    """A hashcash stamp's counter: task = ('sha1', stamp prefix, bits)."""
    return hashcash.search(task[1], task[2], start, count)


def _scan_sha256(task, start, count):
    """A pow1 sub-solution's nonce over SHA-256, hashing the shared prefix once: task = (kind, text, i, limit)."""
    _, text, index, limit = task
    base = hashlib.sha256(f"{text}|{index}|".encode())
    for nonce in range(start, start + count):
        h = base.copy()
        h.update(b"%x" % nonce)
        if int.from_bytes(h.digest(), "big") < limit:
            return nonce
    return None


def _scan_digest(task, start, count):
    """A pow1 sub-solution's nonce over the puzzle's own digest (scrypt): task = (kind, text, i, limit)."""
    kind, text, index, limit = task
    for nonce in range(start, start + count):
        if int.from_bytes(puzzles.digest(kind, puzzles.sub_input(text, index, nonce)), "big") < limit:
            return nonce
    return None


SCANNERS = {"sha1": _scan_sha1, "sha256": _scan_sha256, "scrypt": _scan_digest}  # by the task's hash
UNSOLVABLE = {"sha1": ("sha1", "1:160:261129:rate::x:", 160), "sha256": ("sha256", "rate", 0, 0),
              "scrypt": ("scrypt", "rate", 0, 0)}  # measure_rate's tasks: no nonce solves them


def _scan(task, start, count):
    return SCANNERS[task[0]](task, start, count)


_parent = None  # the pid that made this worker (a worker stops when it is orphaned)


def _init_worker(found):
    global _found, _parent
    _found, _parent = found, os.getppid()


def _race(args):
    """Scan this worker's blocks until anyone has found a solution; returns evaluations tried."""
    task, worker, workers, block, found = args
    found = found if found is not None else _found
    start, tried = worker * block, 0
    while found.value == NOT_FOUND:
        if _parent is not None and os.getppid() != _parent:  # the client was killed: do not spin on
            return tried
        hit = _scan(task, start, block)
        if hit is not None:
            tried += hit - start + 1
            with found.get_lock():
                if found.value == NOT_FOUND:
                    found.value = hit
            return tried
        tried += block
        start += workers * block
    return tried


class _Local:
    """A stand-in for the shared value when solving in-process."""

    def __init__(self):
        self.value = NOT_FOUND

    def get_lock(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Solver:
    """A pool of worker processes kept for many puzzles (use as a context manager)."""

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or default_workers())
        self._pool = self._found = None

    def __enter__(self):
        if self.workers > 1:
            ctx = mp.get_context("fork")
            self._found = ctx.Value("q", NOT_FOUND)
            self._pool = ctx.Pool(self.workers, initializer=_init_worker, initargs=(self._found,))
        return self

    def __exit__(self, *exc):
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    def _solve(self, task, block) -> tuple:
        """(winning nonce, evaluations tried by all workers)."""
        if self._pool is None:
            local = _Local()
            tried = _race((task, 0, 1, block, local))
            return local.value, tried
        self._found.value = NOT_FOUND
        tried = sum(self._pool.map(_race, [(task, w, self.workers, block, None) for w in range(self.workers)]))
        return self._found.value, tried

    def solve_target(self, challenge: str) -> tuple:
        """(solution text, evaluations tried) for a pow1 challenge."""
        ch = puzzles.parse(challenge)
        if isinstance(ch, str):
            raise ConfigError(ch)
        limit = puzzles.threshold(ch.work, ch.subs)
        nonces, tried = [], 0
        for index in range(ch.subs):
            nonce, count = self._solve((ch.kind, challenge, index, limit), BLOCK[ch.kind])
            nonces.append(nonce)
            tried += count
        return f"{challenge}|{','.join(f'{n:x}' for n in nonces)}", tried

    def solve_hashcash(self, resource: str, bits: int, *, solver: str = "python") -> tuple:
        """(stamp, evaluations tried, or expected for the native tool) for a stamp of `bits` bits."""
        if solver == "native":
            return self._native(resource, bits), 2.0 ** bits
        if solver != "python":
            raise ConfigError(f"unknown solver '{solver}'; valid solvers: {', '.join(SOLVERS)}")
        stamp_prefix = hashcash.prefix(bits, resource)
        counter, tried = self._solve(("sha1", stamp_prefix, bits), BLOCK["sha1"])
        return stamp_prefix + hashcash.encode_b64int(counter), tried

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
    """Evaluations per second of our solver for kind in sha1, sha256, scrypt, over `seconds`.

    Runs an unsolvable puzzle (target 0) on all workers and counts the evaluations made meanwhile.
    """
    if kind not in UNSOLVABLE:
        raise ConfigError(f"unknown hash '{kind}'; valid: {', '.join(UNSOLVABLE)}")
    task, block = UNSOLVABLE[kind], BLOCK[kind]
    with Solver(workers) as s:
        if s._pool is None:
            start, done, nonce = time.perf_counter(), 0, 0
            while time.perf_counter() - start < seconds:
                _scan(task, nonce, block)
                nonce += block
                done += block
            return done / (time.perf_counter() - start)
        s._found.value = NOT_FOUND
        pending = s._pool.map_async(_race, [(task, w, s.workers, block, None) for w in range(s.workers)])
        start = time.perf_counter()
        time.sleep(seconds)
        s._found.value = 0  # stop everyone
        tried = sum(pending.get())
        return tried / (time.perf_counter() - start)


def profile_solver(puzzle, *, workers: int = 1, subs: int = 1, seconds: float = 1.0) -> tuple:
    """Fit solve time = overhead_s + work / rate by solving real puzzles of two sizes (~1 ms, ~20 ms).

    `puzzle` is a kinds.Puzzle or its name. This is the rate the client really achieves (block
    overshoot, process hand-offs and verification included), unlike measure_rate()'s raw hashing
    speed. Returns (overhead_s, rate).
    """
    puzzle = kinds.get(puzzle) if isinstance(puzzle, str) else puzzle
    raw = measure_rate(puzzle.hash_kind, workers=workers, seconds=min(0.25, seconds / 4))
    key = os.urandom(16)
    points = []
    with Solver(workers) as s:
        for target_s in (0.001, 0.02):
            level = puzzle.level_for_work(max(2.0, raw * target_s))
            done, start = 0, time.perf_counter()
            while done < 3 or time.perf_counter() - start < seconds / 2:
                puzzle.solve(s, puzzle.issue(key=key, resource="profile", difficulty=level, subs=subs), level)
                done += 1
            points.append((puzzle.work(level), (time.perf_counter() - start) / done))
    (w1, t1), (w2, t2) = points
    if t2 <= t1 or w2 <= w1:
        return 0.0, raw
    rate = (w2 - w1) / (t2 - t1)
    return max(0.0, t1 - w1 / rate), rate
