"""jacobian and jacobiantr (Papernot et al., "Practical Black-Box Attacks against Machine Learning", 2017).

Generation 0 is a seed set drawn from the attacker's in-distribution pool (150 images for 28x28
data, 500 otherwise). Generation g + 1 augments every point of generation g (or, with a cap, a
seeded random subset of them) one Jacobian step along the stolen model's gradient of the victim's
label:
    x' = clip(x + lambda_g * sign(d F(x)[y] / dx), 0, 1),   y the victim's answer for x
with lambda = 0.1. jacobiantr flips the step's sign every TAU generations (lambda_g = lambda * (-1) **
(g // TAU)), so the points do not drift away from the data. Augmentations are computed batch by batch
with the current stolen model, so nothing is queued between rounds: the saved state is a few counters,
and the answered points come back from the run's saved queries on resume (restore_history).
"""
from __future__ import annotations

import torch

from attacks.base import PoolAttack, register
from common.errors import UserError
from data.registry import to_float

LAMBDA = 0.1
TAU = 3  # jacobiantr: generations between sign flips
SEED_SIZE = {1: 150, 3: 500}  # by image channels: MNIST-like, colour


def jacobian_step(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, step: float,
                  device: torch.device) -> torch.Tensor:
    """x + step * sign(gradient of the model's logit of `labels` at x), clipped to [0, 1]."""
    was_training = model.training
    model.eval()
    xs = to_float(x).to(device).requires_grad_(True)
    logits = model(xs)
    picked = logits.gather(1, labels.to(device).view(-1, 1)).sum()
    grad, = torch.autograd.grad(picked, xs)
    model.train(was_training)
    return (xs.detach() + step * grad.sign()).clamp_(0.0, 1.0).cpu()


@register
class JacobianAttack(PoolAttack):
    name = "jacobian"
    flips = False

    @classmethod
    def min_budget(cls, spec) -> int:
        return SEED_SIZE.get(spec.channels, 500)  # its seed set

    def __init__(self, ctx):
        super().__init__(ctx)
        seed_size = self.min_budget(ctx.spec)
        if ctx.budget < seed_size:
            raise UserError(f"'{self.name}' starts from a seed set of {seed_size} queries on '{ctx.spec.name}', "
                            f"but --budget is {ctx.budget}; raise --budget to at least {seed_size}")
        if len(ctx.pool_x) < seed_size:
            raise UserError(f"'{self.name}' needs a seed set of {seed_size} images, the pool has {len(ctx.pool_x)}")
        order = torch.randperm(len(ctx.pool_x), generator=torch.Generator().manual_seed(ctx.seed))
        self.seed_set = ctx.pool_x[order[:seed_size]]
        self.cap = ctx.jacobian_cap  # None or 0: every point of the last generation is augmented
        self.xs: list = []  # every answered point, in order (rebuilt from the run's saved queries on resume)
        self.labels: list = []
        self.sent = 0  # points sent so far, over all generations
        self.generation = 0
        self.bounds = [0]  # bounds[g]: index of the first point of generation g (in answer order)

    def _step(self) -> float:
        sign = -1.0 if self.flips and (self.generation // TAU) % 2 == 1 else 1.0
        return sign * LAMBDA

    def _sources(self) -> torch.Tensor:
        """Indices of the points that generation `generation` augments (all of the last one, or a cap)."""
        start, end = self.bounds[self.generation - 1], self.bounds[self.generation]
        idx = torch.arange(start, end)
        if self.cap and len(idx) > self.cap:
            g = torch.Generator().manual_seed((self.ctx.seed * 1000 + self.generation) % 2 ** 63)
            idx = idx[torch.randperm(len(idx), generator=g)[:self.cap]].sort().values
        return idx

    def select(self, n: int, stolen: torch.nn.Module) -> torch.Tensor:
        """Up to n points of the current generation; a batch never spans two generations, since the next
        one augments this one's points, whose answers come only after this batch is sent."""
        if self.generation == 0:
            x = to_float(self.seed_set[self.sent:self.sent + n])
        else:
            done = self.sent - self.bounds[self.generation]
            chosen = self._sources()[done:done + n].tolist()
            source = torch.cat([self.xs[i] for i in chosen])
            labels = torch.stack([self.labels[i] for i in chosen])
            x = jacobian_step(stolen, source, labels, self._step(), self.ctx.device)
        self.sent += len(x)
        if self._generation_done():
            self.generation += 1
            self.bounds.append(self.sent)
        return x

    def _generation_done(self) -> bool:
        if self.generation == 0:
            return self.sent >= len(self.seed_set)
        return self.sent - self.bounds[self.generation] >= len(self._sources())

    def observe(self, x: torch.Tensor, answers: torch.Tensor) -> None:
        labels = answers.argmax(1) if answers.is_floating_point() else answers
        self.xs.extend(to_float(x).split(1))
        self.labels.extend(labels.long())

    def restore_history(self, xs: list, answers: list) -> None:
        for x, y in zip(xs, answers):
            self.observe(x, y)

    def state_dict(self) -> dict:
        return {"sent": self.sent, "generation": self.generation, "bounds": list(self.bounds)}

    def load_state_dict(self, state: dict) -> None:
        try:
            sent, generation, bounds = int(state["sent"]), int(state["generation"]), [int(b) for b in state["bounds"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"saved {self.name} state is malformed ({exc.__class__.__name__})") from exc
        if len(bounds) != generation + 1 or sent < bounds[-1]:
            raise UserError(f"saved {self.name} state is inconsistent")
        self.sent, self.generation, self.bounds = sent, generation, bounds


@register
class JacobianTrAttack(JacobianAttack):
    name = "jacobiantr"
    flips = True
