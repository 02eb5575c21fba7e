"""Training a victim: the recipe (a typed config), the checkpoint path's checks, and the training itself.

train-victim, the demo, the grid and the frontier all train their victims here. The recipe's values come
from the settings (parameters.py holds their defaults and per-dataset presets); this module has none.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from common import checks
from common.errors import UserError
from common.io import ensure_writable
from common.runtime import resolve_device, set_seed
from data.registry import load_splits
from models import architectures
from models.checkpoint import default_victim_arch, save_victim
from models.training import accuracy, make_optimizer, make_scheduler, plateaued, random_shift, train_epochs


@dataclass(frozen=True)
class VictimRecipe:
    """Everything train_victim reads: the data, the checkpoint, the architecture and the optimiser."""
    dataset: str
    data_dir: str
    seed: int
    device: str
    victim_path: str
    victim_arch: str | None
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    epochs: int
    lr_schedule: str
    plateau_patience: int
    victim_shift: int
    overwrite: bool

    @classmethod
    def of(cls, settings: dict, **changes) -> "VictimRecipe":
        """The recipe's fields from a settings dict (parameters.Settings.as_dict()), with `changes` applied."""
        values = {**settings, **changes}
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in values]
        if missing:
            raise UserError(f"a victim recipe needs the settings {missing}; build them with parameters.parse")
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})


def check_target(path, *, overwrite: bool, flag: str = "--victim_path", command: str = "train-victim") -> Path:
    """The checkpoint path P (and P.json) must be writable, and new unless overwrite is set."""
    path = Path(path)
    sidecar = Path(str(path) + ".json")
    for p in (path, sidecar):
        ensure_writable(p, flag if p == path else "the checkpoint's metadata")
        if (p.exists() or p.is_symlink()) and not overwrite:  # a dangling or looping link is the user's too
            raise UserError(f"{p} already exists; {command} never replaces a file unasked. Pass --overwrite "
                            f"to replace it, or choose another {flag}")
    return path


def train_victim(recipe: VictimRecipe, *, progress: bool = True) -> tuple:
    """Train the victim `s` describes, evaluate it on the held-out split and save it with its P.json;
    returns (the metadata, a report line)."""
    check_target(recipe.victim_path, overwrite=bool(recipe.overwrite))
    target, data = Path(recipe.victim_path).resolve(), Path(recipe.data_dir).resolve()
    if target.exists() and data in target.parents:
        raise UserError(f"--victim_path {recipe.victim_path} is a file inside --data_dir {recipe.data_dir}, among the "
                        f"dataset's files; train-victim never replaces one, even with --overwrite. Choose another "
                        f"--victim_path")
    checks.whole("--epochs", recipe.epochs, lo=1)
    device = resolve_device(recipe.device)
    set_seed(recipe.seed)
    splits = load_splits(recipe.dataset, recipe.data_dir)
    arch = recipe.victim_arch or default_victim_arch(splits.spec)
    model = architectures.create(arch, splits.spec).to(device)
    optimizer = make_optimizer(model, optimizer=recipe.optimizer, lr=recipe.lr, momentum=recipe.momentum,
                               weight_decay=recipe.weight_decay)
    scheduler = make_scheduler(optimizer, schedule=recipe.lr_schedule, epochs=recipe.epochs,
                               patience=recipe.plateau_patience)
    history, early = [], []  # per epoch: the training loss, the held-out accuracy and the rate it trained at
    rate = [recipe.lr]  # the rate of the epoch under way (the scheduler has already set the next one)

    def after_epoch(epoch: int, loss: float) -> bool:
        if not math.isfinite(loss):
            raise UserError(f"the victim's training loss became {loss} at epoch {epoch}: training diverged; lower "
                            f"--lr (now {recipe.lr:g}); nothing was saved")
        history.append({"epoch": epoch, "loss": round(loss, 5), "lr": rate[-1],
                        "test_accuracy": round(accuracy(model, splits.eval_x, splits.eval_y, device), 2)})
        rate.append(optimizer.param_groups[0]["lr"])
        if recipe.lr_schedule == "plateau" and plateaued(optimizer, recipe.lr):
            early.append(epoch)
        return bool(early)

    start = time.perf_counter()
    train_epochs(model, splits.victim_x, splits.victim_y, optimizer=optimizer, epochs=recipe.epochs,
                 batch_size=recipe.batch_size, device=device, generator=torch.Generator().manual_seed(recipe.seed),
                 augment=random_shift(recipe.victim_shift) if recipe.victim_shift else None, scheduler=scheduler,
                 progress="train victim" if progress else None, after_epoch=after_epoch)
    seconds = time.perf_counter() - start
    acc = accuracy(model, splits.eval_x, splits.eval_y, device)
    ran = len(history)
    stopped = ("the learning rate was cut twice: the loss plateaued" if early else "ran every epoch")
    meta = {"dataset": recipe.dataset, "architecture": arch, "test_accuracy": round(acc, 2), "epochs": ran,
            "max_epochs": recipe.epochs, "stopped": stopped, "seed": recipe.seed, "train_size": len(splits.victim_y),
            "test_size": len(splits.eval_y), "train_time_s": round(seconds, 1), "device": str(device),
            "recipe": {"optimizer": recipe.optimizer, "lr": recipe.lr, "momentum": recipe.momentum,
                       "weight_decay": recipe.weight_decay, "batch_size": recipe.batch_size,
                       "lr_schedule": recipe.lr_schedule,
                       **({"plateau_patience": recipe.plateau_patience} if recipe.lr_schedule == "plateau" else {}),
                       "shift": recipe.victim_shift},
            "history": history}
    save_victim(model, recipe.victim_path, meta)
    report = (f"victim {arch} on {recipe.dataset}: test accuracy {acc:.2f}% on {len(splits.eval_y)} held-out images, "
              f"{ran} of at most {recipe.epochs} epochs ({stopped}) in {seconds:.0f} s\n"
              f"saved {recipe.victim_path} and {recipe.victim_path}.json")
    return meta, report
