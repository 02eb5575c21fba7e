"""Shared by the benchmarks: timing (best_of) and where results go (benchmarks/results/NAME.json, also printed)."""
import json
import statistics
import time
from pathlib import Path


def best_of(fn, repeats: int, *, warmup: bool = False) -> tuple:
    """(fastest, median) wall seconds of `repeats` calls of fn(), after one untimed call if warmup."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), float(statistics.median(times))


def write_result(name: str, result: dict) -> Path:
    out = Path(__file__).resolve().parent / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return out
