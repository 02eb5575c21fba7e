"""Legitimate query streams: the kinds of user a deployment really sees, each drawn from the in-distribution
pool (the dataset's images held out from the victim), with replacement once a stream is longer than
what it draws from.

standard  random images, in random order (the baseline's user);
oneclass  images of one class only (a user who only ever scans sevens), the class drawn by the seed;
zipf      a skewed class mix: class r of a seeded ranking is asked with probability ~ 1 / r ** ZIPF_S;
easy      the easiest tenth of the images (lowest `difficulty`);
hard      the hardest tenth (highest `difficulty`);
shifted   random images, each slightly shifted within the task: brightness times U(1 - B, 1 + B), a
          rotation of U(-R, R) degrees and Gaussian noise of SD NOISE (B, R, NOISE below).

`difficulty` is one number per pool image, higher for harder; the frontier uses the victim's loss on
the image's true label. Every stream is uint8, like the pool, and the same for the same seed.
"""
from __future__ import annotations

import torch

from common.errors import UserError, unknown_name

PROFILES = ("standard", "oneclass", "zipf", "easy", "hard", "shifted")
NEEDS_DIFFICULTY = ("easy", "hard")
ZIPF_S = 1.0  # the Zipf exponent of the class mix
DECILE = 0.1  # easy and hard: this share of the pool
BRIGHTNESS, ROTATION_DEG, NOISE = 0.2, 10.0, 0.05  # shifted: the largest brightness change, rotation, noise SD


def _cycle(indices: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n of `indices`: seeded permutations of them, one after another (each image once per pass)."""
    passes = -(-n // len(indices))
    return torch.cat([indices[torch.randperm(len(indices), generator=generator)] for _ in range(passes)])[:n]


def _by_class(labels: torch.Tensor, weights: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n pool indices whose classes follow `weights` (one per class), each class's images in seeded passes."""
    classes = torch.multinomial(weights, n, replacement=True, generator=generator)
    out = torch.empty(n, dtype=torch.long)
    for c in classes.unique():
        where = (classes == c).nonzero().flatten()
        out[where] = _cycle((labels == c).nonzero().flatten(), len(where), generator)
    return out


def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as TF

    out = torch.empty_like(x)
    for i, image in enumerate(x.float().div(255)):
        u = torch.rand(3, generator=generator)
        image = TF.rotate(image * (1 - BRIGHTNESS + 2 * BRIGHTNESS * float(u[0])),
                          angle=ROTATION_DEG * (2 * float(u[1]) - 1))
        image = image + NOISE * torch.randn(image.shape, generator=generator)
        out[i] = image.clamp(0, 1).mul(255).round().to(torch.uint8)
    return out


def profile_stream(name: str, pool_x: torch.Tensor, pool_y: torch.Tensor, n: int, *, seed: int,
                   difficulty: torch.Tensor | None = None) -> torch.Tensor:
    """n queries of the legitimate profile `name` from the pool (images pool_x, labels pool_y)."""
    if name not in PROFILES:
        raise unknown_name("legitimate profile", name, PROFILES)
    if n < 1 or len(pool_x) < 1 or len(pool_x) != len(pool_y):
        raise UserError(f"profile '{name}' needs at least one query and a pool with a label per image "
                        f"(got {n} queries, {len(pool_x)} images, {len(pool_y)} labels)")
    generator = torch.Generator().manual_seed(seed)
    every = torch.arange(len(pool_x))
    labels = pool_y.long()
    classes = int(labels.max()) + 1
    if name in ("standard", "shifted"):
        chosen = _cycle(every, n, generator)
    elif name == "oneclass":
        present = labels.unique()
        one = present[torch.randint(len(present), (1,), generator=generator)]
        chosen = _cycle((labels == one).nonzero().flatten(), n, generator)
    elif name == "zipf":
        ranking = torch.randperm(classes, generator=generator)
        weights = torch.empty(classes, dtype=torch.float64)
        weights[ranking] = 1.0 / torch.arange(1, classes + 1, dtype=torch.float64) ** ZIPF_S
        weights[torch.bincount(labels, minlength=classes) == 0] = 0.0
        chosen = _by_class(labels, weights, n, generator)
    else:
        if difficulty is None or len(difficulty) != len(pool_x) or not torch.isfinite(difficulty).all():
            raise UserError(f"profile '{name}' needs a finite difficulty per pool image (the victim's loss on it)")
        keep = max(1, round(DECILE * len(pool_x)))
        order = torch.sort(difficulty.double(), descending=(name == "hard"), stable=True).indices
        chosen = _cycle(order[:keep], n, generator)
    x = pool_x[chosen]
    if x.dtype != torch.uint8:
        raise UserError(f"profile '{name}': the pool must hold uint8 images, not {x.dtype}")
    return _shift(x, generator) if name == "shifted" else x
