"""Natural out-of-distribution query pools that work offline (copycat, knockoff).

'photos' cuts random crops out of the two sample photographs that scikit-learn ships and resizes
them to the victim's input; another registered dataset can serve as well (Fashion-MNIST for an MNIST
victim, mnist-5k for a Fashion-MNIST one), or any folder of images (searched recursively; for example
CIFAR-10's JPEGs, turned grey and resized for an MNIST victim: the part of the paper's ImageNet pool).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import UserError, unknown_name
from data.folder import image_files, read_images
from data.registry import DatasetSpec, load_splits

MIN_CROP = 24  # smallest square crop side, in photo pixels
MAX_CROP = 320  # largest square crop side, in photo pixels
SAME_SOURCE = {"mnist", "mnist-5k"}  # mnist-5k's digits come from MNIST
SIZE_BUCKETS = 4  # photo crops are grouped by photo and by quartile of crop size
_GRAY = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R 601 luma weights


def _sample_photos() -> list:
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as exc:
        raise UserError("the 'photos' pool needs scikit-learn: pip install -r requirements.txt") from exc
    return [torch.as_tensor(np.array(img)).permute(2, 0, 1).float() for img in load_sample_images().images]


def adapt(images: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """Convert uint8 or float images to the spec's channels and size (uint8 out)."""
    x = images.float()
    if x.shape[1] == 3 and spec.channels == 1:
        x = (x * _GRAY).sum(1, keepdim=True)
    elif x.shape[1] == 1 and spec.channels == 3:
        x = x.repeat(1, 3, 1, 1)
    if x.shape[-1] != spec.size or x.shape[-2] != spec.size:
        x = F.interpolate(x, size=(spec.size, spec.size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp_(0, 255).to(torch.uint8)


def photo_crops(n: int, spec: DatasetSpec, seed: int) -> torch.Tensor:
    """n random square crops of scikit-learn's sample photos, resized to the victim's input."""
    return photo_crops_grouped(n, spec, seed)[0]


def photo_crops_grouped(n: int, spec: DatasetSpec, seed: int) -> tuple:
    """(crops, group of each crop): the group is the photo and the quartile of the crop's size, the
    'classes' a bandit over the pool can choose between (PHOTO_GROUPS of them)."""
    photos = _sample_photos()
    rng = np.random.default_rng(seed)
    out = torch.empty((n, spec.channels, spec.size, spec.size), dtype=torch.uint8)
    groups = torch.empty(n, dtype=torch.long)
    for i in range(n):
        which = int(rng.integers(len(photos)))
        photo = photos[which]
        _, h, w = photo.shape
        top_side = min(MAX_CROP, h, w)
        side = int(rng.integers(MIN_CROP, top_side + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = photo[:, top:top + side, left:left + side].unsqueeze(0)
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        out[i] = adapt(crop, spec)[0]
        quartile = min(SIZE_BUCKETS - 1, (side - MIN_CROP) * SIZE_BUCKETS // (top_side - MIN_CROP + 1))
        groups[i] = which * SIZE_BUCKETS + quartile
    return out, groups


def _dataset_pool(name: str):
    def build(n: int, spec: DatasetSpec, seed: int, data_dir) -> tuple:
        splits = load_splits(name, data_dir)
        images = torch.cat([splits.pool_x, splits.eval_x, splits.victim_x])
        labels = torch.cat([splits.pool_y, splits.eval_y, splits.victim_y])
        if n > len(images):
            raise UserError(f"out-of-distribution pool '{name}' has {len(images)} images, fewer than {n} asked")
        idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
        return adapt(images[idx], spec), labels[idx]
    return build


#: name -> build(n, spec, seed, data_dir) -> (images, group of each image)
OOD_POOLS = {
    "photos": lambda n, spec, seed, data_dir: photo_crops_grouped(n, spec, seed),
    "fashion-mnist": _dataset_pool("fashion-mnist"),
    "mnist-5k": _dataset_pool("mnist-5k"),
    "mnist": _dataset_pool("mnist"),
}


def ood_capacity(name: str, data_dir="data") -> int | None:
    """How many distinct images the named pool holds (None: as many as asked, the photos' crops)."""
    if name not in OOD_POOLS:
        return len(image_files(_folder(name)))
    if name == "photos":
        return None
    splits = load_splits(name, data_dir)
    return len(splits.pool_x) + len(splits.eval_x) + len(splits.victim_x)


def _folder(name: str) -> Path:
    path = Path(name)
    if not path.is_dir():
        raise unknown_name("out-of-distribution pool (or a folder of images)", name, OOD_POOLS)
    return path


def _folder_pool(folder: Path, n: int, spec: DatasetSpec, seed: int) -> tuple:
    """n images drawn at random (seeded) from every image below `folder`, turned to the victim's channels
    and size; the group of each is its sub-folder (its class, in an ImageFolder layout)."""
    files = image_files(folder)
    if n > len(files):
        raise UserError(f"out-of-distribution pool {folder} has {len(files)} images, fewer than the {n} asked; "
                        f"add images or lower --budget")
    idx = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:n]
    chosen = [files[i] for i in idx.tolist()]
    parents = sorted({p.parent for p in chosen})
    groups = torch.tensor([parents.index(p.parent) for p in chosen], dtype=torch.long)
    return read_images(chosen, channels=spec.channels, size=spec.size), groups


def ood_pool(name: str, n: int, spec: DatasetSpec, *, seed: int, data_dir="data") -> torch.Tensor:
    """n natural non-problem-domain images for the victim `spec`, from the named source."""
    return ood_pool_grouped(name, n, spec, seed=seed, data_dir=data_dir)[0]


def ood_pool_grouped(name: str, n: int, spec: DatasetSpec, *, seed: int, data_dir="data") -> tuple:
    """(images, groups): the pool and a class-like group per image (labels, or photo and crop size)."""
    if name not in OOD_POOLS:
        return _folder_pool(_folder(name), n, spec, seed)
    check_not_own(name, spec.name)
    return OOD_POOLS[name](n, spec, seed, data_dir)


def check_not_own(pool: str, dataset: str) -> None:
    """UserError where the named pool is the victim's own data (its training and evaluation images)."""
    if pool == dataset or {pool, dataset} <= SAME_SOURCE:
        raise UserError(f"--ood_pool {pool} is the victim's own data ('{dataset}'): it holds the victim's training "
                        f"and evaluation images, which an attacker never queries; choose another pool")
