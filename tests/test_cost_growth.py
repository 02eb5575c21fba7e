"""The paper's MNIST comparison: its CSVs read three ways, the cost-growth factorial, and the paper's victim
recipe (ReduceLROnPlateau, stopping at the second cut)."""
from __future__ import annotations

import json

import pytest
import torch

import main as entry
import parameters
from commands.costs import PAPER_DIR, cost_growth
from extraction.cost_growth import GrowthConfig, ceiling, effects, measure
from models.training import make_scheduler, plateaued
from pow.paper import growth_claims
from tests.conftest import ROOT

DATA = ROOT / "tests" / "data"


def test_the_authors_csvs_read_three_ways():
    claims = growth_claims(PAPER_DIR / "time_privacy_cost_mnist.csv",
                           PAPER_DIR / "model_extraction_attack_accuracy_mnist.csv").set_index("mode")
    assert claims.loc["standard", "cost_per_query"] == pytest.approx(2576.1 / 10_000, abs=1e-4)
    assert claims.loc["copycat", "queries"] == 11_000  # 176 batches of 64, counted 16 to 1,000
    assert claims.loc["copycat", "growth_per_query"] == pytest.approx(0.5302 / 0.2576, rel=1e-3)
    assert claims["growth_per_query"].max() == pytest.approx(2.737, abs=1e-3)  # DFME: the most, and not 7x
    # the same accuracy for more cost: copycat first reaches 92.66% at a cost 12.9x standard's at 92.66%
    assert claims.loc["copycat", "growth_equal_accuracy"] == pytest.approx(12.9, abs=0.05)
    assert claims.loc["copycat", "at_accuracy"] == pytest.approx(92.66)
    assert claims.loc["standard", "growth_equal_accuracy"] == pytest.approx(1.0)


def test_the_factorial_varies_each_cause_alone_and_reads_its_main_effects(victim_path):
    config = GrowthConfig(queries=24, k=20)
    pool = str(DATA / "image-folder" / "train")
    frame = measure({"a": str(victim_path), "b": str(victim_path)}, ["mnist-5k", "mnist"], ["photos", pool],
                    data_dir=DATA / "mnist-idx", config=config, progress=False)
    assert len(frame) == 16 and set(frame["knn_size"]) == {3000, 60} and (frame["k"] == 20).all()
    assert set(frame["sigma"]) == {28.0, 10.0}
    assert (frame["queries"] == 24).all() and (frame["legit_eps_per_query"] > 0).all()
    assert frame["growth"].to_numpy() == pytest.approx((frame["ood_eps_per_query"] / frame["legit_eps_per_query"]).to_numpy())
    same = frame.groupby(["knn_set", "pool", "sigma"])["growth"].nunique()
    assert (same == 1).all(), "the same checkpoint under two labels measures the same"
    main = effects(frame).set_index(["factor", "level"])
    assert main.loc[("victim", "a"), "swing"] == pytest.approx(1.0)
    by_pool = frame.groupby("pool")["growth"].mean()
    assert main.loc[("pool", pool), "growth"] == pytest.approx(by_pool[pool])
    assert main.loc[("pool", "photos"), "swing"] == pytest.approx(by_pool.max() / by_pool.min())
    assert (frame["growth"] <= frame["most_growth"] * (1 + 1e-9)).all(), "no stream beats the accountant's ceiling"


def test_the_ceiling_bounds_any_attackers_growth_at_the_papers_sigma():
    bound = ceiling(300, 10, sigma=28.0, delta=1e-5)
    assert bound["least_eps"] == pytest.approx(0.161, abs=1e-3) and bound["most_eps"] == pytest.approx(0.2436, abs=1e-3)
    assert bound["most_growth"] == pytest.approx(1.51, abs=0.01)
    assert ceiling(300, 10, sigma=10.0, delta=1e-5)["most_eps"] > 0.530, "sigma 10 leaves room for the authors' 0.530"
    with pytest.raises(Exception, match="--sigmas"):
        GrowthConfig(sigmas=())


def test_the_command_writes_its_table_notes_and_verdicts_and_refuses_a_label_twice(tmp_path, victim_path, capsys):
    out = tmp_path / "g.csv"
    s = parameters.parse(["cost-growth", "--victims", f"mine={victim_path}", "--queries", "64", "--out", str(out)])
    frame, text = cost_growth(s, progress=False)
    assert list(frame["victim"]) == ["mine", "mine"] and json.loads(out.with_suffix(".params.json").read_text())
    notes = out.with_suffix(".md").read_text()
    for _, row in frame.iterrows():
        legit = row["legit_eps_per_query"]
        close = abs(legit - 0.2576) <= 0.15 * 0.2576
        assert (f"mine / mnist-5k / sigma {row['sigma']:g} ({legit:.4f})" in notes) == close
    assert "At sigma 28, any query costs between 0.161 and 0.244, so no attacker's cost can grow more than 1.51x" \
        in notes and "The authors' copycat paid 0.530 per query: beyond this sigma's range" in notes
    assert "per query, the authors' CSVs reach at most 2.74x (data free)" in notes
    assert "copycat 12.9x at 92.7%" in notes
    code = entry.main(["cost-growth", "--victims", f"x={victim_path},x={victim_path}", "--out", str(tmp_path / "h.csv")])
    assert code == 2 and "names 'x' twice" in capsys.readouterr().err
    code = entry.main(["cost-growth", "--victims", f"mine={victim_path}", "--queries", "64", "--out", str(out)])
    assert code == 2 and "already exists" in capsys.readouterr().err, "never overwrites the table"


def test_the_plateau_schedule_cuts_tenfold_and_stops_after_the_second_cut():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = make_scheduler(opt, schedule="plateau", epochs=50, patience=1)
    losses = [1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    stops = []
    for loss in losses:
        sched.step(loss)
        stops.append(plateaued(opt, 0.1))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)
    assert stops.index(True) == 5 and not any(stops[:5]), "stalled twice for patience + 1 epochs each"
    with pytest.raises(Exception, match="unknown --lr_schedule 'step'"):
        make_scheduler(opt, schedule="step", epochs=5)
