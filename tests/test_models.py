"""Architectures and checkpoint loading, including a raw third-party ResNet34-8x state dict."""
import subprocess
import sys

import pytest
import torch

from common.errors import UserError
from data.registry import create
from models import architectures
from models.checkpoint import load_victim, save_victim


@pytest.mark.parametrize("arch,dataset", [("mnistnet", "mnist-5k"), ("resnet18", "cifar10"),
                                          ("resnet34_8x", "svhn")])
def test_architectures_take_their_inputs(arch, dataset):
    spec = create(dataset)
    model = architectures.create(arch, spec).eval()
    with torch.no_grad():
        assert model(torch.rand(2, *spec.input_shape)).shape == (2, 10)


def test_raw_resnet34_8x_state_dict_loads(tmp_path):
    spec = create("cifar10")
    source = architectures.create("resnet34_8x", spec)
    raw = {k: v for k, v in source.state_dict().items() if not k.startswith("normalize.")}  # like DFME's file
    path = tmp_path / "cifar10-teacher.pt"
    torch.save(raw, path)
    model, meta = load_victim(path, spec)
    assert meta["architecture"] == "resnet34_8x"
    assert torch.equal(model.state_dict()["linear.weight"], raw["linear.weight"])
    torch.save({k: v for k, v in raw.items() if not k.startswith("layer4")}, path)
    with pytest.raises(UserError, match="does not fit architecture 'resnet34_8x'.*train-victim"):
        load_victim(path, spec)


def test_checkpoint_round_trip(tmp_path):
    spec = create("mnist-5k")
    model = architectures.create("mnistnet", spec)
    save_victim(model, tmp_path / "v.pt", {"dataset": "mnist-5k", "architecture": "mnistnet"})
    loaded, meta = load_victim(tmp_path / "v.pt", spec, architecture="mnistnet")
    assert (tmp_path / "v.pt.json").exists() and meta["dataset"] == "mnist-5k"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_main_model_extraction_entry_point():
    from tests.conftest import ROOT
    out = subprocess.run([sys.executable, str(ROOT / "main_model_extraction.py"), "--help"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "--mode" in out.stdout and "--calibration" in out.stdout


@pytest.mark.parametrize("script", ["dfme/train.py", "MixMatch-pytorch/train.py", "jacobian.py"])
def test_the_papers_scripts_run_this_checkout_from_anywhere(script, tmp_path):
    """Started from another folder with nothing installed or on PYTHONPATH, each script runs this checkout's
    extract (its --help is extract's, with the flags of its own mode)."""
    import os

    from tests.conftest import ROOT
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: main.py extract" in out.stdout and "--dfme_directions" in out.stdout


def test_teacher_votes_are_right_from_many_threads_at_once():
    """A server's request threads ask the one ensemble for votes together (serve --log_costs pate): each
    gets the histogram a lone caller gets (functional_call swaps parameters into a module as it runs)."""
    from concurrent.futures import ThreadPoolExecutor

    from models.teachers import TeacherEnsemble

    torch.manual_seed(0)
    teachers = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)) for _ in range(6)]
    ensemble = TeacherEnsemble(teachers, 10, torch.device("cpu"), teachers_per_call=2)
    batches = [torch.rand(n, 1, 28, 28) for n in (1, 3, 7, 16, 33, 50) * 6]
    expected = [ensemble.votes_loop(x) for x in batches]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(ensemble.votes, batches))
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
