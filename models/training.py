"""The one training loop: victim, stolen model and every attack use it.

Targets are either class labels (cross-entropy) or probability vectors (soft cross-entropy).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from common import checks
from common.errors import ConfigError
from data.registry import to_float

EVAL_BATCH = 1024  # batch size for inference-only passes
MAX_LR = 10.0  # learning rates above this diverge (and 1e308 overflows inside the optimizer)


def soft_cross_entropy(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against probability targets (equals KL divergence up to the targets' entropy)."""
    return -(probs * F.log_softmax(logits, dim=1)).sum(1).mean()


def make_optimizer(model: nn.Module, *, optimizer: str, lr: float, momentum: float, weight_decay: float):
    checks.finite("--lr", lr, lo=0, hi=MAX_LR, lo_open=True)
    checks.finite("--momentum", momentum, lo=0, hi=1, hi_open=True)
    checks.finite("--weight_decay", weight_decay, lo=0, hi=1)
    if optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    if optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer '{optimizer}'; valid optimizers: adam, sgd")


LR_SCHEDULES = ("cosine", "plateau")
PLATEAU_FACTOR = 0.1  # ReduceLROnPlateau's cut
PLATEAU_CUTS = 2  # a plateau run stops once its learning rate has been cut this many times


def make_scheduler(optimizer, *, schedule: str, epochs: int, patience: int = 2):
    """cosine: anneal to zero over `epochs`. plateau: cut the rate tenfold when the training loss has not
    improved for `patience` epochs (ReduceLROnPlateau, as the paper's MNIST victim was trained)."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if schedule == "plateau":
        checks.whole("--plateau_patience", patience, lo=0)
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=PLATEAU_FACTOR,
                                                          patience=patience)
    raise ConfigError(f"unknown --lr_schedule '{schedule}'; valid: {', '.join(LR_SCHEDULES)}")


def plateaued(optimizer, lr: float) -> bool:
    """True once a plateau schedule has cut the learning rate PLATEAU_CUTS times: the loss has stopped
    improving at two successive rates, and further epochs at a hundredth of the rate change little."""
    return optimizer.param_groups[0]["lr"] <= lr * PLATEAU_FACTOR ** PLATEAU_CUTS * (1 + 1e-6)


def train_epochs(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, *, optimizer, epochs: int,
                 batch_size: int, device: torch.device, generator: torch.Generator, augment=None,
                 scheduler=None, progress: str | None = None, after_epoch=None) -> float:
    """Train for at most `epochs` passes over (x, targets); returns the last epoch's mean loss.

    `targets` of dtype long are labels; float targets of shape (N, C) are probabilities.
    `augment(xb, generator)` may transform each float batch. `progress` names a tqdm bar.
    A ReduceLROnPlateau scheduler steps on the epoch's mean loss, any other without arguments.
    `after_epoch(epoch, loss)` runs after each epoch (counted from 1); training stops when it returns True.
    """
    soft = targets.is_floating_point()
    last = float("nan")
    bar = tqdm(range(1, epochs + 1), desc=progress, leave=False, disable=progress is None)
    for epoch in bar:
        model.train()  # after_epoch may have evaluated it
        order = torch.randperm(len(x), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            xb = to_float(x[idx])
            if augment is not None:
                xb = augment(xb, generator)
            xb, yb = xb.to(device), targets[idx].to(device)
            logits = model(xb)
            loss = soft_cross_entropy(logits, yb) if soft else F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        last = total / max(count, 1)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(last)
        elif scheduler is not None:
            scheduler.step()
        bar.set_postfix(loss=f"{last:.4f}")
        if after_epoch is not None and after_epoch(epoch, last):
            break
    return last


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Logits for every image, in inference mode, on the CPU."""
    model.eval()
    outs = [model(to_float(x[s:s + EVAL_BATCH]).to(device)).float().cpu() for s in range(0, len(x), EVAL_BATCH)]
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float((predict_logits(model, x, device).argmax(1) == y).float().mean())


def random_shift(max_shift: int):
    """An augmentation: shift each image by up to max_shift pixels in each direction (zero padding)."""
    def augment(xb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = xb.shape
        pad = F.pad(xb, [max_shift] * 4)
        dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator).tolist()
        dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator).tolist()
        return torch.stack([pad[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return augment
