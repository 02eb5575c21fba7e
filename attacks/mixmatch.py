"""mixmatch (Berthelot et al., "MixMatch: A Holistic Approach to Semi-Supervised Learning", 2019).

The attacker labels a few pool images through the victim (random order, like `standard`) and keeps
the rest of its pool unlabelled. Each round it buys the round's labels, then trains the stolen model
with MixMatch steps:
  * K = 2 augmentations of each unlabelled image; their mean prediction, sharpened with T = 0.5,
    is the image's guessed label;
  * every labelled and unlabelled image is mixed with a random partner (mixup, lambda ~ Beta(0.75, 0.75),
    kept >= 0.5 so each mix stays closer to its own image);
  * loss = cross-entropy on the mixed labelled part + lambda_u * ramp * squared error on the mixed
    unlabelled part, lambda_u = 75, ramped up linearly over the first 16 epochs.
One epoch is one pass over the unlabelled pool (or --mixmatch_steps steps); each round trains
--stolen_epochs of them with Adam (--mixmatch_lr). The whole batch goes through the network in one
forward pass, so batch-norm sees labelled and unlabelled images together (the purpose of the original's
interleaving).
Labels answered so far come back from the run's saved queries on resume (restore_history).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from attacks.base import TrainingAttack, register
from common import checks
from common.errors import UserError
from data.registry import to_float
from models.training import random_shift, soft_cross_entropy

K = 2  # augmentations per unlabelled image
RAMP_EPOCHS = 16  # lambda_u reaches its full weight after this many epochs (as in the original); never
#                   tied to --budget, which may change when a run resumes
SHIFT = {1: 2, 3: 4}  # by image channels: random translation in pixels (flips only for colour images)


@dataclass(frozen=True)
class MixMatchOptions:
    mixmatch_t: float = field(default=0.5, metadata={"help": "sharpening temperature T"})
    mixmatch_alpha: float = field(default=0.75, metadata={"help": "mixup Beta(alpha, alpha)"})
    mixmatch_lambda_u: float = field(default=75.0, metadata={"help": "weight of the unlabelled loss"})
    mixmatch_lr: float = field(default=0.002, metadata={"help": "Adam learning rate"})
    mixmatch_steps: int | None = field(default=None, metadata={
        "help": "optimiser steps per epoch (None: one pass over the unlabelled pool; the original takes 1024)"})

    def __post_init__(self):
        checks.finite("--mixmatch_t", self.mixmatch_t, lo=0.01, hi=10)
        checks.finite("--mixmatch_alpha", self.mixmatch_alpha, lo=0, hi=100, lo_open=True)
        checks.finite("--mixmatch_lambda_u", self.mixmatch_lambda_u, lo=0, hi=1e4)
        checks.finite("--mixmatch_lr", self.mixmatch_lr, lo=0, hi=1, lo_open=True)
        if self.mixmatch_steps is not None:
            checks.whole("--mixmatch_steps", self.mixmatch_steps, lo=1, hi=1_000_000)


def sharpen(probs: torch.Tensor, t: float) -> torch.Tensor:
    """p^(1/T), renormalised per row (computed in log space, so tiny probabilities do not underflow)."""
    logits = torch.log(probs.clamp_min(1e-30)) / t
    return torch.softmax(logits, dim=1)


def mixup(x: torch.Tensor, y: torch.Tensor, lam: float, perm: torch.Tensor) -> tuple:
    """lam' * (x, y) + (1 - lam') * (x, y)[perm], with lam' = max(lam, 1 - lam)."""
    lam = max(lam, 1.0 - lam)
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]


def guess_labels(model: torch.nn.Module, views: list, t: float) -> torch.Tensor:
    """The sharpened mean prediction over K augmented views of the same unlabelled images."""
    with torch.no_grad():
        mean = torch.stack([torch.softmax(model(v), dim=1) for v in views]).mean(0)
    return sharpen(mean, t)


def mixmatch_loss(model, x_l, y_l, u_views, *, t, alpha, lambda_u, generator) -> tuple:
    """(loss, labelled loss, unlabelled loss) of one MixMatch step; y_l are probability rows."""
    q = guess_labels(model, u_views, t)
    x = torch.cat([x_l, *u_views])
    y = torch.cat([y_l, *([q] * len(u_views))])
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(x), generator=generator)
    mixed_x, mixed_y = mixup(x, y, lam, perm.to(x.device))
    logits = model(mixed_x)
    n = len(x_l)
    loss_l = soft_cross_entropy(logits[:n], mixed_y[:n])
    loss_u = F.mse_loss(torch.softmax(logits[n:], dim=1), mixed_y[n:])
    return loss_l + lambda_u * loss_u, loss_l, loss_u


@register
class MixMatchAttack(TrainingAttack):
    name = "mixmatch"
    Options = MixMatchOptions

    @staticmethod
    def default_arch(spec) -> str | None:
        return "wrn28_2" if spec.channels == 3 else None

    @classmethod
    def max_budget(cls, pool_size: int) -> int | None:
        return pool_size - 1  # at least one pool image stays unlabelled

    def __init__(self, ctx):
        super().__init__(ctx)
        self.opts = ctx.options or MixMatchOptions()
        pool = ctx.pool_x
        if ctx.budget > self.max_budget(len(pool)):
            raise UserError(f"'{self.name}' labels part of its pool and learns from the rest, but --budget "
                            f"{ctx.budget} would label all {len(pool)} pool images; lower --budget")
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(ctx.seed))
        self.pool = pool[order]
        self.sent = 0
        self.steps = 0
        self.x_l: list = []
        self.y_l: list = []
        self.augment = random_shift(SHIFT.get(ctx.spec.channels, 2))
        self.generator = torch.Generator().manual_seed(ctx.seed + 1)

    def _views(self, x: torch.Tensor) -> torch.Tensor:
        out = self.augment(x, self.generator)
        if self.ctx.spec.channels == 3:
            flip = torch.rand(len(out), generator=self.generator) < 0.5
            out[flip] = out[flip].flip(3)
        return out

    def make_optimizer(self, stolen):
        return torch.optim.Adam(stolen.parameters(), lr=self.opts.mixmatch_lr)

    def run_round(self, query, stolen, queries: int) -> None:
        x = self.pool[self.sent:self.sent + queries]
        self.observe(x, query(x))
        self.sent += len(x)
        self._train(stolen)

    def observe(self, x: torch.Tensor, answers: torch.Tensor) -> None:
        num_classes = self.ctx.spec.num_classes
        targets = answers.float() if answers.is_floating_point() else F.one_hot(answers.long(), num_classes).float()
        self.x_l.append(to_float(x))
        self.y_l.append(targets)

    def restore_history(self, xs: list, answers: list) -> None:
        for x, y in zip(xs, answers):
            self.observe(x, y)

    def _train(self, stolen) -> None:
        device, o = self.ctx.device, self.opts
        optimizer = self.optimizer(stolen)
        x_l, y_l = torch.cat(self.x_l), torch.cat(self.y_l)
        unlabelled = self.pool[self.sent:]
        batch = self.ctx.batch_size
        per_epoch = o.mixmatch_steps or math.ceil(len(unlabelled) / batch)
        steps = self.ctx.epochs * per_epoch
        ramp_end = max(1, RAMP_EPOCHS * per_epoch)
        stolen.train()
        for _ in range(steps):
            li = torch.randint(0, len(x_l), (min(batch, len(x_l)),), generator=self.generator)
            ui = torch.randint(0, len(unlabelled), (min(batch, len(unlabelled)),), generator=self.generator)
            xl = self._views(x_l[li]).to(device)
            u = to_float(unlabelled[ui])
            views = [self._views(u).to(device) for _ in range(K)]
            ramp = min(1.0, self.steps / ramp_end)
            loss, _, _ = mixmatch_loss(stolen, xl, y_l[li].to(device), views, t=o.mixmatch_t,
                                       alpha=o.mixmatch_alpha, lambda_u=o.mixmatch_lambda_u * ramp,
                                       generator=self.generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.steps += 1

    def state_dict(self) -> dict:
        return {"sent": self.sent, "steps": self.steps, "generator": self.generator.get_state(),
                "optimizer": self.optimizer_state()}

    def load_state_dict(self, state: dict) -> None:
        try:
            sent, steps, gen = int(state["sent"]), int(state["steps"]), state["generator"]
            self.generator.set_state(gen)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise UserError(f"saved {self.name} state is malformed ({exc.__class__.__name__})") from exc
        if not 0 <= sent <= self.ctx.budget or steps < 0:
            raise UserError(f"saved {self.name} state is inconsistent")
        self.sent, self.steps = sent, steps
        self.restore_optimizer(state.get("optimizer"))
