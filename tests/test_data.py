"""Dataset registry, splits, IDX parsing, out-of-distribution pools."""
import gzip
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import UserError
from data import load_splits
from data.idx import read_idx
from data.ood import adapt, ood_pool
from data.registry import DEBIAN_FASHION_DIR, create


def test_mnist5k_splits_are_disjoint_and_sized():
    s = load_splits("mnist-5k")
    assert s.sizes() == {"victim": 3000, "pool": 1500, "eval": 500}
    assert s.victim_x.dtype == torch.uint8 and tuple(s.victim_x.shape[1:]) == (1, 28, 28)
    flat = lambda x: {bytes(r) for r in x.reshape(len(x), -1).numpy()}  # noqa: E731
    assert not flat(s.pool_x) & flat(s.eval_x)
    again = load_splits("mnist-5k")
    assert torch.equal(again.pool_x, s.pool_x)  # deterministic


def test_unknown_dataset_lists_names():
    with pytest.raises(ValueError, match="cifar10, fashion-mnist, folder, mnist, mnist-5k, svhn"):
        create("imagenet")


def test_idx_round_trip_and_corruption(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes()
    good = tmp_path / "x-idx3-ubyte.gz"
    good.write_bytes(gzip.compress(raw))
    assert np.array_equal(read_idx(good), arr)
    short = tmp_path / "short-idx3-ubyte"
    short.write_bytes(raw[:-3])
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_idx(short)
    magic = tmp_path / "magic-idx3-ubyte"
    magic.write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(UserError, match="magic"):
        read_idx(magic)


@pytest.mark.skipif(not DEBIAN_FASHION_DIR.exists(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package(tmp_path):
    s = load_splits("fashion-mnist", tmp_path)
    assert s.sizes() == {"victim": 60000, "pool": 8000, "eval": 2000}


def test_photo_crops_fit_the_victim():
    spec = create("mnist-5k")
    x = ood_pool("photos", 16, spec, seed=0)
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.equal(x, ood_pool("photos", 16, spec, seed=0))
    rgb = adapt(x, create("cifar10"))
    assert rgb.shape == (16, 3, 32, 32)


# -- datasets and pools from folders (tests/data fixtures, never ../shared) ------------------------------
DATA = Path(__file__).resolve().parent / "data"


def test_mnist_offline_from_bare_idx_files_or_torchvisions_layout(tmp_path):
    bare = load_splits("mnist", DATA / "mnist-idx")
    assert bare.sizes() == {"victim": 60, "pool": 24, "eval": 6}  # 80% / 20% of the 30 test images
    assert bare.victim_x.dtype == torch.uint8 and tuple(bare.victim_x.shape[1:]) == (1, 28, 28)
    layout = tmp_path / "MNIST" / "raw"
    layout.mkdir(parents=True)
    for f in (DATA / "mnist-idx").iterdir():
        shutil.copy(f, layout / f.name)
    again = load_splits("mnist", tmp_path)
    assert torch.equal(again.victim_x, bare.victim_x) and torch.equal(again.pool_y, bare.pool_y)


def test_an_image_folder_is_a_dataset_with_its_own_spec():
    splits = load_splits("folder", DATA / "image-folder")
    spec = splits.spec
    assert (spec.channels, spec.size, spec.num_classes) == (1, 28, 3)
    assert splits.sizes() == {"victim": 24, "pool": 7, "eval": 2}  # 8 per class; 3 per class, 80% / 20%
    assert torch.equal(splits.victim_y.bincount(), torch.tensor([8, 8, 8]))
    assert 0.05 < spec.mean[0] < 0.3 and 0.2 < spec.std[0] < 0.45  # digits: mostly black
    assert "digit0, digit1, digit2" in spec.description


def test_cifar10_loads_from_an_image_folder_in_torchvisions_label_order(tmp_path):
    splits = load_splits("cifar10", DATA / "cifar10-folder")
    assert splits.spec == create("cifar10"), "the registered spec (the paper's mean and std) is kept"
    assert tuple(splits.victim_x.shape[1:]) == (3, 32, 32) and splits.victim_x.dtype == torch.uint8
    assert torch.equal(splits.victim_y, torch.arange(10).repeat_interleave(2)), "airplane is 0 ... truck is 9"
    assert len(splits.pool_y) + len(splits.eval_y) == 10
    shutil.copytree(DATA / "image-folder", tmp_path / "digits")  # another folder: not CIFAR-10's classes
    with pytest.raises(UserError, match="not CIFAR-10's.*digit0.*use --dataset folder"):
        load_splits("cifar10", tmp_path / "digits")


def test_a_failed_download_names_the_files_and_leaves_no_new_folder(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)  # offline, whatever the machine
    (tmp_path / "mine").mkdir()  # a folder of the user's: kept, though empty
    with pytest.raises(UserError, match=r"not in --data_dir .*train-images-idx3-ubyte.*pass --data_dir"):
        load_splits("mnist", tmp_path)
    assert [p.name for p in tmp_path.rglob("*")] == ["mine"], "the failed download left folders behind"


def test_bare_idx_files_are_mnists_and_never_taken_for_fashion_mnist():
    bare = DATA / "mnist-idx"  # MNIST's four files, bare; Fashion-MNIST's have the same names
    assert len(load_splits("mnist", bare).victim_y) == 60
    try:
        fashion = load_splits("fashion-mnist", bare)  # Debian's package where installed, else an offline error
    except UserError as exc:
        assert "fashion-mnist" in str(exc)
    else:
        assert len(fashion.victim_y) == 60_000, "Fashion-MNIST came from its own files, not MNIST's"


def test_an_image_folder_without_its_layout_says_what_it_needs(tmp_path):
    with pytest.raises(UserError, match="ROOT/train/CLASS"):
        load_splits("folder", tmp_path)
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "b").mkdir()
    (tmp_path / "test" / "c").mkdir(parents=True)
    with pytest.raises(UserError, match="class folders that train/ lacks"):
        load_splits("folder", tmp_path)
    (tmp_path / "test" / "c").rmdir()
    (tmp_path / "test" / "a").mkdir()
    (tmp_path / "train" / "a" / "x.png").write_bytes(b"not a png")
    (tmp_path / "test" / "a" / "y.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="x.png"):
        load_splits("folder", tmp_path)


def test_a_folder_of_images_is_an_out_of_distribution_pool():
    folder = DATA / "image-folder" / "train"
    x = ood_pool(str(folder), 20, create("mnist-5k"), seed=0)
    assert x.shape == (20, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.equal(x, ood_pool(str(folder), 20, create("mnist-5k"), seed=0))
    rgb = ood_pool(str(folder), 5, create("cifar10"), seed=1)  # grey images for an RGB victim: three equal planes
    assert rgb.shape == (5, 3, 32, 32) and torch.equal(rgb[:, 0], rgb[:, 2])
    with pytest.raises(UserError, match="fewer than the 25 asked"):
        ood_pool(str(folder), 25, create("mnist-5k"), seed=0)
    with pytest.raises(ValueError, match="folder of images"):
        ood_pool(str(folder / "missing"), 5, create("mnist-5k"), seed=0)
