"""Images from a folder, in torchvision's ImageFolder layout: ROOT/train/CLASS/* and ROOT/test/CLASS/*.

The practitioner's own data (`--dataset folder --data_dir ROOT`), or a natural-image pool for the
attacks (`--ood_pool PATH`, any folder of images, searched recursively). The spec is read from the
images: the classes are train/'s sub-folders, sorted; the images are grey (1 channel) when every
training image is, else RGB; their side is the most common height among the training images, and an
image of another size is resized to it (bilinear); mean and standard deviation per channel come from
the training images. Everything is uint8 (N, C, S, S).
"""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
GREY_MODES = {"1", "L", "I;16", "I", "F"}
LAYOUT = "ROOT/train/CLASS/*.jpg and ROOT/test/CLASS/*.jpg (torchvision's ImageFolder layout, per split)"


def image_files(folder: Path) -> list:
    """Every image file below `folder`, sorted (so a load repeats exactly)."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UserError(f"cannot read the image {path} ({exc}); remove it or replace it") from None


def read_images(paths: list, *, channels: int, size: int) -> torch.Tensor:
    """The images at `paths` as uint8 (N, channels, size, size)."""
    from PIL import Image

    out = np.empty((len(paths), size, size, channels), dtype=np.uint8)
    for i, path in enumerate(paths):
        img = _open(path).convert("L" if channels == 1 else "RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(img, dtype=np.uint8).reshape(size, size, channels)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _classes(split: Path, least: int) -> list:
    if not split.is_dir():
        raise UserError(f"{split} is missing: an image-folder dataset needs {LAYOUT}")
    classes = sorted(p.name for p in split.iterdir() if p.is_dir())
    if len(classes) < least:
        raise UserError(f"{split} holds {len(classes)} class folder(s), fewer than {least} ({LAYOUT})")
    return classes


def _split(root: Path, name: str, classes: list) -> tuple:
    paths, labels = [], []
    for label, cls in enumerate(classes):
        found = image_files(root / name / cls) if (root / name / cls).is_dir() else []
        paths += found
        labels += [label] * len(found)
    return paths, labels


def load_image_folder(root) -> tuple:
    """(train_x, train_y, test_x, test_y, meta) with meta = {classes, channels, size, mean, std}."""
    root = Path(root)
    classes = _classes(root / "train", 2)  # the test split may hold some of them only
    extra = sorted(set(_classes(root / "test", 1)) - set(classes))
    if extra:
        raise UserError(f"{root / 'test'} has class folders that train/ lacks ({', '.join(extra[:5])}); both splits "
                        f"must use train/'s classes")
    train_paths, train_y = _split(root, "train", classes)
    test_paths, test_y = _split(root, "test", classes)
    if not train_paths or not test_paths:
        raise UserError(f"{root} has {len(train_paths)} training and {len(test_paths)} test images; both splits need "
                        f"images ({', '.join(sorted(EXTENSIONS))})")
    from PIL import Image

    modes, heights = set(), collections.Counter()
    for path in train_paths:  # headers only: nothing is decoded here
        try:
            with Image.open(path) as img:
                modes.add(img.mode)
                heights[img.size[1]] += 1
        except OSError as exc:
            raise UserError(f"cannot read the image {path} ({exc}); remove it or replace it") from None
    channels = 1 if modes <= GREY_MODES else 3
    size = heights.most_common(1)[0][0]
    xtr = read_images(train_paths, channels=channels, size=size)
    xte = read_images(test_paths, channels=channels, size=size)
    pixels = xtr.float().div(255)
    mean = tuple(float(v) for v in pixels.mean(dim=(0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in pixels.std(dim=(0, 2, 3)))
    meta = {"classes": classes, "channels": channels, "size": size, "mean": mean, "std": std}
    return xtr, torch.tensor(train_y, dtype=torch.long), xte, torch.tensor(test_y, dtype=torch.long), meta
