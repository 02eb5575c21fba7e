"""train-victim: train, evaluate and save a victim checkpoint with its P.json (models.victim_training)."""
from __future__ import annotations

from models.victim_training import VictimRecipe
from models.victim_training import train_victim as train
from parameters import add_recipe


def train_victim(s, *, progress: bool = True) -> tuple:
    return train(VictimRecipe.of(s.as_dict()), progress=progress)


def add_arguments(sub) -> None:
    add_recipe(sub, "train-victim")  # other commands write and run its command lines: its flags live in parameters
