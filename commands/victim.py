"""train-victim: train, evaluate and save a victim checkpoint with its P.json (models.victim_training)."""
from __future__ import annotations

from models.victim_training import VictimRecipe
from models.victim_training import train_victim as train


def train_victim(s, *, progress: bool = True) -> tuple:
    return train(VictimRecipe.of(s.as_dict()), progress=progress)
