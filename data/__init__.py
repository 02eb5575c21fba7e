"""Dataset registry, deterministic victim/attacker/eval splits, and offline out-of-distribution pools."""
from data.registry import DATASETS, DatasetSpec, Splits, create, load_splits, to_float

__all__ = ["DATASETS", "DatasetSpec", "Splits", "create", "load_splits", "to_float"]
