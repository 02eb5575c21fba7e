"""Where benchmark results go: benchmarks/results/NAME.json, also printed."""
import json
from pathlib import Path


def write_result(name: str, result: dict) -> Path:
    out = Path(__file__).resolve().parent / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return out
