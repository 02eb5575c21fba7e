"""knockoff (Orekondy et al., CVPR 2019): natural out-of-distribution images, victim probabilities, soft
cross-entropy.

--sampling random    a seeded random order over the pool;
--sampling adaptive  a gradient bandit over the pool's groups (class labels of a dataset pool; photo and
                     crop size for the photo crops). Each answer earns the reward
                         certainty  p_top1 - p_top2 of the victim's answer,
                         diversity  sum_k max(0, y_k - mean of the last DIVERSITY_WINDOW answers_k),
                         loss       cross-entropy of the stolen model's prediction against the answer,
                     and the chosen arm's preference moves by lr (r - mean r)(1 - pi), the others by
                     -lr (r - mean r) pi. Guards other toolkits lack: probabilities are clamped before
                     log (no log 0), preferences are re-centred and the softmax subtracts its maximum (no
                     overflow), and rewards are centred by a running mean and scaled only when their
                     spread is positive (no division by zero).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attacks.base import PoolAttack, register
from common.errors import UserError
from data.ood import ood_pool_grouped
from models.training import predict_logits

SAMPLINGS = ("random", "adaptive")
POOL_FACTOR = 2  # the pool holds this many candidates per query, so the bandit has choices
LEARNING_RATE = 0.1
DIVERSITY_WINDOW = 25
PROB_FLOOR = 1e-12


def certainty_reward(y: torch.Tensor) -> torch.Tensor:
    top2 = y.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def diversity_reward(y: torch.Tensor, recent: torch.Tensor) -> torch.Tensor:
    if len(recent) == 0:
        return torch.zeros(len(y), dtype=y.dtype)
    return (y - recent.mean(0, keepdim=True)).clamp(min=0).sum(1)


def loss_reward(y: torch.Tensor, stolen_logprobs: torch.Tensor) -> torch.Tensor:
    return -(y * stolen_logprobs.clamp(min=math.log(PROB_FLOOR))).sum(1)


def rewards(y: torch.Tensor, stolen_logprobs: torch.Tensor, recent: torch.Tensor) -> torch.Tensor:
    """The sum of the three rewards per answer; finite for any probabilities, zeros and ones included."""
    y = torch.nan_to_num(y.double(), nan=0.0).clamp(0.0, 1.0)
    r = certainty_reward(y) + diversity_reward(y, recent.double()) + loss_reward(y, stolen_logprobs.double())
    return torch.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)


def policy(preferences: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Softmax over the arms that still have images; others get probability 0."""
    h = preferences.double().masked_fill(~available, -math.inf)
    h = h - h[available].max()
    p = torch.exp(h)
    return p / p.sum()


@register
class KnockoffAttack(PoolAttack):
    name = "knockoff"
    uses_ood_pool = True
    soft_targets = True

    def __init__(self, ctx):
        super().__init__(ctx)
        if ctx.sampling not in SAMPLINGS:
            raise UserError(f"unknown --sampling '{ctx.sampling}'; valid: {', '.join(SAMPLINGS)}")
        self.images = self._pool()
        self.generator = torch.Generator().manual_seed(ctx.seed)
        self.position = 0
        # The pool is already in random order, and a longer pool (a larger --budget) starts with the same
        # images; so do the arms' lists, so that a resumed run with a larger budget picks what it would have.
        arms = int(self.groups.max()) + 1
        self.members = [(self.groups == a).nonzero().flatten() for a in range(arms)]
        self.sizes = torch.tensor([len(m) for m in self.members])
        self.taken = torch.zeros(arms, dtype=torch.long)
        self.preferences = torch.zeros(arms, dtype=torch.float64)
        self.reward_mean, self.reward_sq, self.reward_count = 0.0, 0.0, 0
        self.recent = torch.zeros((0, ctx.spec.num_classes), dtype=torch.float64)
        self.pending: tuple | None = None

    def build_pool(self) -> torch.Tensor:
        n = POOL_FACTOR * self.ctx.budget if self.ctx.sampling == "adaptive" else self.ctx.budget
        images, self.groups = ood_pool_grouped(self.ctx.ood_pool, n, self.ctx.spec, seed=self.ctx.seed,
                                               data_dir=self.ctx.data_dir)
        return images

    def select(self, n: int, stolen: torch.nn.Module) -> torch.Tensor:
        if self.ctx.sampling == "random":
            x = self.images[self.position:self.position + n]
            self.position += len(x)
            return x
        arms, picks = [], []
        for _ in range(n):
            available = self.taken < self.sizes
            arm = int(torch.multinomial(policy(self.preferences, available), 1, generator=self.generator))
            picks.append(int(self.members[arm][self.taken[arm]]))
            self.taken[arm] += 1
            arms.append(arm)
        x = self.images[torch.tensor(picks)]
        stolen_logprobs = F.log_softmax(predict_logits(stolen, x, self.ctx.device), dim=1)
        self.pending = (torch.tensor(arms), stolen_logprobs)
        self.position += n
        return x

    def observe(self, x: torch.Tensor, answers: torch.Tensor) -> None:
        if self.ctx.sampling == "random" or self.pending is None:
            return
        arms, stolen_logprobs = self.pending
        self.pending = None
        y = answers.double()
        r = rewards(y, stolen_logprobs, self.recent)
        for arm, reward in zip(arms.tolist(), r.tolist()):
            self._update(arm, reward)
        self.recent = torch.cat([self.recent, y])[-DIVERSITY_WINDOW:]

    def _update(self, arm: int, reward: float) -> None:
        self.reward_count += 1
        delta = reward - self.reward_mean
        self.reward_mean += delta / self.reward_count
        self.reward_sq += delta * (reward - self.reward_mean)
        spread = math.sqrt(self.reward_sq / self.reward_count) if self.reward_count > 1 else 0.0
        advantage = (reward - self.reward_mean) / spread if spread > 1e-12 else 0.0
        available = self.taken < self.sizes
        pi = policy(self.preferences, available | (torch.arange(len(self.preferences)) == arm))
        step = LEARNING_RATE * advantage
        self.preferences -= step * pi
        self.preferences[arm] += step
        self.preferences -= self.preferences.mean()  # re-centred: the softmax is unchanged, no drift

    def state_dict(self) -> dict:
        return {"position": self.position, "taken": self.taken.clone(), "preferences": self.preferences.clone(),
                "reward": [self.reward_mean, self.reward_sq, self.reward_count], "recent": self.recent.clone(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        try:
            position, taken, prefs = int(state["position"]), state["taken"], state["preferences"]
            mean, sq, count = state["reward"]
            recent, gen = state["recent"], state["generator"]
            ok = (taken.shape == self.taken.shape and prefs.shape == self.preferences.shape
                  and recent.dim() == 2 and bool(torch.isfinite(prefs).all()))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"saved knockoff state is malformed ({exc.__class__.__name__})") from exc
        if not ok:
            raise UserError("saved knockoff state does not fit this pool")
        self.position, self.taken, self.preferences = position, taken.clone(), prefs.clone()
        self.reward_mean, self.reward_sq, self.reward_count = float(mean), float(sq), int(count)
        self.recent = recent.clone()
        self.generator.set_state(gen)
