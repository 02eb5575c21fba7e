"""Dataset registry, splits, IDX parsing, out-of-distribution pools."""
import gzip

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
    with pytest.raises(ValueError, match="cifar10, fashion-mnist, mnist, mnist-5k, svhn"):
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
