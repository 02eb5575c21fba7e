"""dfme (Truong et al., "Data-Free Model Extraction", CVPR 2021): no data at all, only a generator.

A generator G turns noise into images; the student (the stolen model) learns to match the victim on
them, and G learns to make images where the two disagree most. The victim is a black box, so the
gradient of the disagreement with respect to G's images is estimated by forward differences:
    grad L(x) ~ (d / m) * sum_i [(L(x + eps * u_i) - L(x)) / eps] * u_i,   u_i uniform on the unit sphere
with m random directions per image (--dfme_directions), step eps (--dfme_epsilon) and d the image size.
L is the l1 distance between the student's logits and the victim's, recovered from its probabilities
as log p - mean(log p) (DFME's logit approximation).

Every point the victim sees is a query, the forward differences included. One iteration of batch B:
  * --dfme_generator_steps generator steps, each B * (m + 1) queries (B images and m moved copies);
  * --dfme_student_steps student steps, each B queries;
so B * ((m + 1) * n_G + n_S) queries (7 * B with the defaults). A round holds whole iterations; the last
iteration of a budget that is not a multiple shrinks B, and a remainder below one image's share buys one
student step, so the run spends exactly --budget. No query is kept: the saved state is the two models
and their optimizers, the same size after 2,000 or 2,000,000 queries.
Generator images lie in [eps, 1 - eps], so every moved copy is a valid image in [0, 1] too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from attacks.base import TrainingAttack, register
from common import checks
from common.errors import UserError

MAX_IMAGES_PER_CALL = 16384  # images of one generator step's forward differences (with their activations)


@dataclass(frozen=True)
class DfmeOptions:
    dfme_directions: int = field(default=1, metadata={"help": "random directions m per image for forward differences"})
    dfme_epsilon: float = field(default=1e-3, metadata={"help": "forward-difference step"})
    dfme_generator_steps: int = field(default=1, metadata={"help": "generator steps per iteration (n_G)"})
    dfme_student_steps: int = field(default=5, metadata={"help": "student steps per iteration (n_S)"})
    dfme_lr_student: float = field(default=0.1, metadata={"help": "student SGD learning rate"})
    dfme_lr_generator: float = field(default=1e-4, metadata={"help": "generator Adam learning rate"})
    dfme_nz: int = field(default=256, metadata={"help": "generator noise dimension"})

    def __post_init__(self):
        checks.whole("--dfme_directions", self.dfme_directions, lo=1, hi=10_000)
        checks.finite("--dfme_epsilon", self.dfme_epsilon, lo=1e-6, hi=0.1)
        checks.whole("--dfme_generator_steps", self.dfme_generator_steps, lo=0, hi=1000)
        checks.whole("--dfme_student_steps", self.dfme_student_steps, lo=1, hi=1000)
        checks.finite("--dfme_lr_student", self.dfme_lr_student, lo=0, hi=10, lo_open=True)
        checks.finite("--dfme_lr_generator", self.dfme_lr_generator, lo=0, hi=1, lo_open=True)
        checks.whole("--dfme_nz", self.dfme_nz, lo=1, hi=4096)

    @property
    def per_image(self) -> int:
        """Queries per generated image in one iteration: (m + 1) * n_G + n_S."""
        return (self.dfme_directions + 1) * self.dfme_generator_steps + self.dfme_student_steps


class Generator(nn.Module):
    """Noise -> image: a linear layer to a (128, H/4, W/4) map, two upsample-conv stages, a conv to the
    image's channels, then batch-norm and tanh, mapped into [eps, 1 - eps]."""

    def __init__(self, nz: int, shape: tuple, margin: float):
        super().__init__()
        channels, h, w = shape
        if h % 4 or w % 4:
            raise UserError(f"dfme's generator makes images whose sides are multiples of 4, not {h}x{w}")
        self.start, self.margin = (128, h // 4, w // 4), margin
        self.fc = nn.Linear(nz, 128 * (h // 4) * (w // 4))
        self.net = nn.Sequential(
            nn.BatchNorm2d(128), nn.Upsample(scale_factor=2),
            nn.Conv2d(128, 128, 3, padding=1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(128, 64, 3, padding=1), nn.BatchNorm2d(64), nn.LeakyReLU(0.2),
            nn.Conv2d(64, channels, 3, padding=1), nn.BatchNorm2d(channels, affine=False))

    def forward(self, z):
        out = torch.tanh(self.net(self.fc(z).view(-1, *self.start)))
        return self.margin + (1 - 2 * self.margin) * (out + 1) / 2


def victim_logits(probs: torch.Tensor) -> torch.Tensor:
    """DFME's logit approximation from probabilities: log p - mean(log p), with p floored at 1e-8."""
    logp = torch.log(probs.float().clamp_min(1e-8))
    return logp - logp.mean(1, keepdim=True)


def forward_differences(loss_fn, x: torch.Tensor, *, directions: int, epsilon: float) -> tuple:
    """(per-image loss at x, the estimated gradient of each image's loss), from ONE call of loss_fn on
    (directions + 1) * len(x) points: the images, then `directions` moved copies of each."""
    b = len(x)
    flat = x.flatten(1)
    d = flat.shape[1]
    u = torch.randn(b, directions, d)
    u = u / u.norm(dim=2, keepdim=True)
    moved = (flat.unsqueeze(1) + epsilon * u.to(flat.device)).reshape(b * directions, d)
    losses = loss_fn(torch.cat([flat, moved]).view(-1, *x.shape[1:]))
    base, shifted = losses[:b], losses[b:].view(b, directions)
    slopes = (shifted - base[:, None]) / epsilon
    grad = (d / directions) * (slopes[:, :, None] * u.to(slopes.device)).sum(1)
    return base, grad.view_as(x)


@register
class DfmeAttack(TrainingAttack):
    name = "dfme"
    soft_targets = True
    keeps_queries = False
    Options = DfmeOptions

    def __init__(self, ctx):
        super().__init__(ctx)
        self.opts = o = ctx.options or DfmeOptions()
        need = ctx.query_batch * o.per_image
        if ctx.budget < need:
            raise UserError(f"one dfme iteration at --query_batch {ctx.query_batch} costs {need} queries "
                            f"({ctx.query_batch} x ((m + 1) x {o.dfme_generator_steps} generator steps + "
                            f"{o.dfme_student_steps} student steps), m = {o.dfme_directions}), but --budget is "
                            f"{ctx.budget}; raise --budget to at least {need} or lower --query_batch")
        per_call = ctx.query_batch * (o.dfme_directions + 1)
        if per_call > MAX_IMAGES_PER_CALL:
            raise UserError(f"a dfme generator step sends --query_batch x (--dfme_directions + 1) = {per_call} images "
                            f"to the victim at once, more than the {MAX_IMAGES_PER_CALL} allowed in memory; lower "
                            f"--dfme_directions or --query_batch")
        self.generator = Generator(o.dfme_nz, ctx.spec.input_shape, o.dfme_epsilon).to(ctx.device)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=o.dfme_lr_generator)
        self.iterations = 0

    def round_queries(self, planned: int) -> int:
        whole = self.ctx.query_batch * self.opts.per_image
        return max(whole, planned // whole * whole)

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.opts.dfme_nz).to(self.ctx.device)

    def _student_loss(self, stolen, x, answers) -> torch.Tensor:
        return (stolen(x) - victim_logits(answers).to(x.device)).abs().mean(1)

    def iteration(self, query, stolen, batch: int) -> None:
        """One DFME iteration at `batch` images: batch * per_image queries."""
        o, device = self.opts, self.ctx.device
        for _ in range(o.dfme_generator_steps):
            self.generator.train()
            x = self.generator(self._noise(batch))

            def disagreement(points):
                answers = query(points.detach().cpu())
                stolen.eval()
                with torch.no_grad():
                    return self._student_loss(stolen, points.to(device), answers)

            _, grad = forward_differences(disagreement, x.detach(), directions=o.dfme_directions,
                                          epsilon=o.dfme_epsilon)
            self.opt_g.zero_grad(set_to_none=True)
            x.backward(-grad.to(x.device) / batch)  # ascend: images where the copy disagrees most
            self.opt_g.step()
        for _ in range(o.dfme_student_steps):
            self.student_step(query, stolen, batch)
        self.iterations += 1

    def student_step(self, query, stolen, batch: int) -> None:
        with torch.no_grad():
            x = self.generator(self._noise(batch))
        answers = query(x.cpu())
        stolen.train()
        loss = self._student_loss(stolen, x, answers).mean()
        opt_s = self.optimizer(stolen)
        opt_s.zero_grad(set_to_none=True)
        loss.backward()
        opt_s.step()

    def make_optimizer(self, stolen):
        """The student's SGD (momentum 0.9, weight decay 5e-4, as DFME)."""
        return torch.optim.SGD(stolen.parameters(), lr=self.opts.dfme_lr_student, momentum=0.9, weight_decay=5e-4)

    def run_round(self, query, stolen, queries: int) -> None:
        per_image, left = self.opts.per_image, queries
        while left > 0:
            batch = min(self.ctx.query_batch, left // per_image)
            if batch == 0:  # less than one image's share left: one student step spends it exactly
                self.student_step(query, stolen, left)
                break
            self.iteration(query, stolen, batch)
            left -= batch * per_image

    def state_dict(self) -> dict:
        return {"iterations": self.iterations, "generator": self.generator.state_dict(),
                "opt_g": self.opt_g.state_dict(),
                "opt_s": self.optimizer_state()}

    def load_state_dict(self, state: dict) -> None:
        try:
            self.generator.load_state_dict(state["generator"])
            self.opt_g.load_state_dict(state["opt_g"])
            self.iterations = int(state["iterations"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise UserError(f"saved {self.name} state does not fit this generator ({exc.__class__.__name__}); "
                            f"pass --fresh to start over") from exc
        self.restore_optimizer(state.get("opt_s"))
