"""The PATE teacher ensemble: partitions, vote histograms (vectorised = loop), the train-teachers command,
and --cost_measure pate through a real extraction."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

import main
import parameters
from commands.teachers import train_teachers
from common.errors import UserError
from data.registry import create as create_spec
from extraction.loop import run_extraction
from models import architectures
from models.teachers import TeacherEnsemble, default_num_models, load_teachers, partition
from privacy import accountants

SPEC = create_spec("mnist-5k")


def fixed_teacher(cls: int):
    """A real mnistnet whose output is dominated by a bias on one class: it always votes `cls`."""
    model = architectures.create("mnistnet", SPEC)
    with torch.no_grad():
        model.fc2.bias.zero_()
        model.fc2.bias[cls] = 1e4
    return model


def test_default_number_of_teachers_scales_with_the_training_set():
    assert default_num_models(60_000) == 250  # the paper's MNIST ensemble
    assert default_num_models(3_000) == 12  # mnist-5k: 250 images each, not 12
    assert default_num_models(500) == 10 and default_num_models(10 ** 7) == 250


def test_partitions_are_disjoint_and_cover_the_data():
    parts = partition(1003, 10, seed=0)
    every = torch.cat(parts)
    assert len(parts) == 10 and len(every) == 1003 and len(set(every.tolist())) == 1003
    assert {len(p) for p in parts} <= {100, 101}
    with pytest.raises(UserError, match="--num_models must lie in 1..5"):
        partition(5, 6, seed=0)


def test_vote_histogram_counts_each_teachers_choice():
    classes = [0, 1, 1, 2, 2, 2, 9]
    ensemble = TeacherEnsemble([fixed_teacher(c) for c in classes], 10, torch.device("cpu"))
    votes = ensemble.votes(torch.rand(5, 1, 28, 28))
    expected = torch.tensor([1, 2, 3, 0, 0, 0, 0, 0, 0, 1])
    assert votes.dtype == torch.int64 and votes.shape == (5, 10)
    assert (votes == expected).all()


@pytest.mark.parametrize("per_call", [None, 1, 3, 100])
def test_vectorised_votes_equal_the_per_teacher_loop(per_call):
    torch.manual_seed(0)
    models = [architectures.create("mnistnet", SPEC) for _ in range(7)]
    ensemble = TeacherEnsemble(models, 10, torch.device("cpu"), teachers_per_call=per_call)
    x = torch.randint(0, 256, (33, 1, 28, 28), dtype=torch.uint8)
    votes = ensemble.votes(x)
    assert torch.equal(votes, ensemble.votes_loop(x)) and (votes.sum(1) == 7).all()


def test_pate_accountant_prices_the_teachers_votes_on_the_images():
    ensemble = TeacherEnsemble([fixed_teacher(c) for c in [3] * 9 + [4]], 10, torch.device("cpu"))
    acc = accountants.create("pate", ensemble_votes=ensemble.votes, sigma=2.0, delta=1e-5)
    x = torch.rand(4, 1, 28, 28)
    per_query = acc.add(torch.zeros(4, 10), x)["pate_cost"]
    eps, _ = accountants.knn_costs(np.array([[0, 0, 0, 9, 1, 0, 0, 0, 0, 0]] * 4), sigma=2.0, delta=1e-5)
    assert np.allclose(per_query, eps)
    totals = acc.totals()
    assert totals["pate_cost"] == pytest.approx(eps.sum()) and 0 < totals["pate_eps"] < totals["pate_cost"]
    with pytest.raises(ValueError, match="query images"):
        acc.add(torch.zeros(1, 10), None)
    assert accountants.pate_sigma(250) == pytest.approx(10.0) and accountants.pate_sigma(50) == pytest.approx(2.0)
    assert accountants.pate_sigma(12, 3.5) == 3.5


def test_worstcase_prices_pate_with_one_vote_per_teacher():
    from attacks.worstcase import surrogate_cost
    sure = torch.log(torch.tensor([[1.0] + [0.0] * 9]))
    unsure = torch.log(torch.full((1, 10), 0.1))
    costs = surrogate_cost(torch.cat([sure, unsure]), "pate", k=300, sigma=28.0, delta=1e-5, teachers=250,
                           pate_sigma=10.0)
    assert costs[0] < costs[1]


@pytest.fixture(scope="module")
def teachers_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("teachers") / "mnist-5k-teachers.pt"
    meta, report = train_teachers(main.parse(
        ["train-teachers", "--teachers_path", str(path), "--num_models", "4", "--teacher_epochs", "3",
         "--device", "cpu"]), progress=False)
    assert "4 teachers" in report and "per teacher:" in report
    return path


def test_train_teachers_reports_each_teacher_and_never_overwrites(teachers_path):
    meta = json.loads((teachers_path.parent / (teachers_path.name + ".json")).read_text())
    assert meta["num_models"] == 4 and meta["images_per_teacher"] == [750] * 4
    assert len(meta["teacher_accuracy"]) == 4 and all(a > 50 for a in meta["teacher_accuracy"])
    ensemble, loaded = load_teachers(teachers_path, SPEC)
    assert len(ensemble) == 4 and loaded["teacher_accuracy"] == meta["teacher_accuracy"]
    before = teachers_path.read_bytes()
    with pytest.raises(UserError, match="never replaces a file unasked. Pass --overwrite"):
        train_teachers(main.parse(["train-teachers", "--teachers_path", str(teachers_path),
                                         "--num_models", "2", "--teacher_epochs", "1"]), progress=False)
    assert teachers_path.read_bytes() == before


def test_teachers_of_another_dataset_or_missing_are_refused(teachers_path, tmp_path):
    with pytest.raises(UserError, match="python main.py train-teachers --dataset mnist-5k"):
        load_teachers(tmp_path / "none.pt", SPEC)
    with pytest.raises(UserError, match="not 'fashion-mnist'"):
        load_teachers(teachers_path, create_spec("fashion-mnist"))
    junk = tmp_path / "junk.pt"
    torch.save({"a": torch.zeros(2)}, junk)
    with pytest.raises(UserError, match="is not a teacher ensemble"):
        load_teachers(junk, SPEC)


def test_extraction_logs_pate_costs(victim_path, teachers_path, tmp_path):
    s = parameters.parse(["extract", "--victim_path", str(victim_path), "--teachers_path", str(teachers_path),
                          "--cost_measure", "pate", "--budget", "128", "--batches_per_round", "1",
                          "--stolen_epochs", "1", "--device", "cpu", "--out_dir", str(tmp_path / "run")])
    frame = pd.read_csv(run_extraction(s, progress=False)["log"])
    assert frame["pate_cost"].notna().all() and (frame["pate_cost"].diff().dropna() > 0).all()
    assert (frame["pate_eps"] <= frame["pate_cost"]).all()
    params = json.loads((tmp_path / "run" / "params.json").read_text())
    assert params["settings"]["cost_measure"] == "pate"
    assert params["settings"]["pate"] == {"teachers": 4, "sigma": pytest.approx(0.16)}
    plain = parameters.parse(["extract", "--victim_path", str(victim_path), "--budget", "64", "--stolen_epochs", "0",
                              "--device", "cpu", "--out_dir", str(tmp_path / "plain")])
    frame = pd.read_csv(run_extraction(plain, progress=False)["log"])
    assert frame["pate_cost"].isna().all()  # no teachers asked for: the columns stay empty, never zero
