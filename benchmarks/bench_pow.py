"""Proof-of-work speed: our client solver against the best native rate for the same function.

For each puzzle, on this machine, in one run:
  hashcash (SHA-1)  ours: the Python scanner on all cores; native: the hashcash tool's own speed test
                    (`hashcash -s`, one core) times the workers; also our --solver native path, timed by
                    minting real stamps;
  sha256 target     ours: the Python scanner; native: `openssl speed sha256` on 64-byte inputs per core;
  scrypt            ours: the Python scanner (each evaluation is one hashlib.scrypt call, OpenSSL's C code);
                    native: the same C function in a tight loop, no puzzle logic.
plus the server's verification time per stamp / solution. Writes benchmarks/results/pow.json.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import time

from benchmarks.results_io import write_result
from pow import hashcash, puzzles
from pow.replay import ReplayGuard
from pow.solver import Solver, measure_rate, profile_solver


def openssl_sha256_rate() -> float | None:
    if shutil.which("openssl") is None:
        return None
    out = subprocess.run(["openssl", "speed", "-seconds", "2", "-bytes", "64", "sha256"], capture_output=True,
                         text=True, timeout=60).stdout
    m = re.search(r"^sha256\s+([\d.]+)k", out, re.M)
    return float(m.group(1)) * 1000 / 64 if m else None


def scrypt_native_rate(seconds: float) -> float:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        puzzles.digest("scrypt", b"native-%d" % done)
        done += 1
    return done / (time.perf_counter() - start)


def per_call(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


class _RebuildGuard:
    """The spent set as it was before: every claim rebuilds the dict (the baseline, measured side by side)."""

    def __init__(self):
        self._seen = {}

    def claim(self, token, expires, now):
        self._seen = {k: e for k, e in self._seen.items() if e >= now}
        if token in self._seen:
            return False
        self._seen[token] = expires
        return True


def bench_replay_guard(entries: int = 200_000) -> dict:
    """Mean time of one claim with `entries` live tokens: ReplayGuard against the rebuild-per-claim baseline."""
    now = time.time()
    out = {"entries": entries}
    for name, guard, claims in (("replay_guard", ReplayGuard(), 20_000), ("rebuild_baseline", _RebuildGuard(), 20)):
        if isinstance(guard, ReplayGuard):
            for i in range(entries):
                guard.claim(f"t{i}", now + 3600, now=now)
        else:
            guard._seen = {f"t{i}": now + 3600 for i in range(entries)}
        start = time.perf_counter()
        for i in range(claims):
            guard.claim(f"new{i}", now + 3600, now=now)
        out[f"{name}_claim_us"] = (time.perf_counter() - start) / claims * 1e6
    out["speedup"] = out["rebuild_baseline_claim_us"] / out["replay_guard_claim_us"]
    print(f"spent-set claim at {entries} entries: {out['replay_guard_claim_us']:.2f} us "
          f"(rebuild baseline {out['rebuild_baseline_claim_us']:.0f} us, {out['speedup']:.0f}x)")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    w, secs = args.workers, args.seconds
    key = b"bench-key-0123456789"
    result = {"workers": w, "modes": {}}

    ours = measure_rate("sha1", workers=w, seconds=secs)
    native = hashcash.native_rate() * w if hashcash.native_tool() else None
    with Solver(1) as one:
        stamp = one.solve_hashcash("bench", 12)[0]
    entry = {"ours_python_rate": ours, "native_rate": native,
             "verify_us": per_call(lambda: hashcash.check(stamp, bits=12, resource="bench"), 2000) * 1e6}
    if native:
        bits = 22
        with Solver(w) as s:
            start, n = time.perf_counter(), 0
            while n < 3 or time.perf_counter() - start < secs:
                s.solve_hashcash("bench", bits, solver="native")
                n += 1
            entry["ours_native_solver_rate"] = n * 2.0 ** bits / (time.perf_counter() - start)
        entry["ratio_python"] = ours / native
        entry["ratio_native_solver"] = entry["ours_native_solver_rate"] / native
    result["modes"]["hashcash"] = entry

    ours = measure_rate("sha256", workers=w, seconds=secs)
    native_one = openssl_sha256_rate()
    with Solver(1) as one:
        sol = one.solve_target(puzzles.issue(key=key, resource="b", work=1000))[0]
    entry = {"ours_python_rate": ours, "native_rate": native_one * w if native_one else None,
             "verify_us": per_call(lambda: puzzles.verify(sol, key=key, kind="sha256", resource="b", min_work=1),
                                  2000) * 1e6}
    if native_one:
        entry["ratio_python"] = ours / (native_one * w)
    result["modes"]["sha256"] = entry

    ours = measure_rate("scrypt", workers=w, seconds=secs)
    native_one = scrypt_native_rate(secs)
    with Solver(1) as one:
        sol = one.solve_target(puzzles.issue(key=key, resource="b", work=3, kind="scrypt"))[0]
    entry = {"ours_python_rate": ours, "native_rate": native_one * w, "ratio_python": ours / (native_one * w),
             "verify_us": per_call(lambda: puzzles.verify(sol, key=key, kind="scrypt", resource="b", min_work=1),
                                  200) * 1e6,
             "memory_per_evaluation_bytes": puzzles.SCRYPT_MEMORY_BYTES,
             "seconds_per_evaluation": 1.0 / native_one,
             "params": {"n": puzzles.SCRYPT_N, "r": puzzles.SCRYPT_R, "p": puzzles.SCRYPT_P}}
    overhead, rate = profile_solver("scrypt", workers=w, seconds=secs)
    entry["effective_puzzle_rate"], entry["per_puzzle_overhead_s"] = rate, overhead
    result["modes"]["scrypt"] = entry

    result["replay_guard"] = bench_replay_guard()
    write_result("pow", result)


if __name__ == "__main__":
    main()
