"""Legitimate profiles, the cost-aware out-of-distribution attacker, and the frontier command end to end."""
from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest
import torch

import commands.frontier as frontier_module
import parameters
from attacks import AttackContext, create
from attacks.base import options_for
from commands.frontier import COLUMNS, _kept, frontier, parse_tolerances
from common.errors import UserError
from data.profiles import DECILE, PROFILES, profile_stream
from data.registry import load_splits
from models.checkpoint import load_victim
from models.oracle import Victim
from privacy.accountants import shannon_entropy

N = 600


@pytest.fixture(scope="module")
def splits():
    return load_splits("mnist-5k", "data")


def test_every_profile_is_uint8_and_repeats_with_its_seed(splits):
    difficulty = torch.arange(len(splits.pool_x), dtype=torch.float64)
    for name in PROFILES:
        a = profile_stream(name, splits.pool_x, splits.pool_y, N, seed=3, difficulty=difficulty)
        b = profile_stream(name, splits.pool_x, splits.pool_y, N, seed=3, difficulty=difficulty)
        assert a.shape == (N, 1, 28, 28) and a.dtype == torch.uint8
        assert torch.equal(a, b), name
        assert not torch.equal(a, profile_stream(name, splits.pool_x, splits.pool_y, N, seed=4,
                                                 difficulty=difficulty)), name


def _labels_of(stream, splits):
    """Each streamed image's pool label (the streams hold pool images unchanged, except shifted)."""
    flat = splits.pool_x.flatten(1)
    index = {bytes(row.numpy()): i for i, row in enumerate(flat)}
    return torch.tensor([int(splits.pool_y[index[bytes(row.numpy())]]) for row in stream.flatten(1)])


def test_oneclass_and_zipf_skew_the_class_mix(splits):
    one = _labels_of(profile_stream("oneclass", splits.pool_x, splits.pool_y, N, seed=0), splits)
    assert one.unique().numel() == 1
    counts = torch.bincount(_labels_of(profile_stream("zipf", splits.pool_x, splits.pool_y, N, seed=0), splits),
                            minlength=10).sort(descending=True).values.double()
    standard = torch.bincount(_labels_of(profile_stream("standard", splits.pool_x, splits.pool_y, N, seed=0), splits),
                              minlength=10).double()
    assert counts[0] / N > 0.25 and counts[0] > 4 * counts[-1]  # about 1/H_10 = 34% for the first class
    assert standard.max() / N < 0.2  # the standard user's mix is near uniform


def test_easy_and_hard_take_their_decile_and_need_a_difficulty(splits):
    difficulty = torch.rand(len(splits.pool_x), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    keep = round(DECILE * len(splits.pool_x))
    flat = splits.pool_x.flatten(1)
    for name, chosen in (("easy", difficulty.argsort()[:keep]), ("hard", difficulty.argsort()[-keep:])):
        stream = profile_stream(name, splits.pool_x, splits.pool_y, N, seed=0, difficulty=difficulty)
        allowed = {bytes(flat[i].numpy()) for i in chosen}
        assert all(bytes(row.numpy()) in allowed for row in stream.flatten(1)), name
    for bad in (None, torch.full((len(splits.pool_x),), math.nan), torch.zeros(3)):
        with pytest.raises(UserError, match="difficulty"):
            profile_stream("hard", splits.pool_x, splits.pool_y, N, seed=0, difficulty=bad)
    with pytest.raises(UserError, match="legitimate profile"):
        profile_stream("lazy", splits.pool_x, splits.pool_y, N, seed=0)


def test_shifted_images_move_a_little_within_the_task(splits):
    shifted = profile_stream("shifted", splits.pool_x, splits.pool_y, N, seed=0).float() / 255
    plain = profile_stream("standard", splits.pool_x, splits.pool_y, N, seed=0).float() / 255
    change = (shifted - plain).abs().mean(dim=(1, 2, 3))
    assert (change > 0).all()  # every image moved ...
    assert change.mean() < 0.12  # ... by brightness, a few degrees and light noise, not into another image


def test_worstcaseood_sends_its_cheapest_out_of_distribution_images_across_classes(victim_path, splits):
    victim = Victim(load_victim(victim_path, splits.spec, device=torch.device("cpu"))[0], device=torch.device("cpu"))
    options = parameters.parse(["extract", "--mode", "worstcaseood", "--worstcaseood_candidates", "512"])
    attack = create("worstcaseood", AttackContext(splits.spec, splits.pool_x, 64, 0,
                                                  options=options_for("worstcaseood", options.as_dict())))
    assert len(attack.images) == 512  # photo crops: the default --ood_pool
    everything = shannon_entropy(victim.log_probs(attack.images))
    chosen = attack.select(64, victim.model)  # the victim as its own perfect surrogate: the cheapest for real
    cost = shannon_entropy(victim.log_probs(chosen))
    assert cost.mean() < everything.quantile(0.25)  # far below a random draw of the candidates
    assert victim.log_probs(chosen).argmax(1).unique().numel() >= 3  # in turn across classes
    assert int(attack.used.sum()) == 64 and len(attack.select(64, victim.model)) == 64


def test_tolerances_parse_to_rules():
    assert parse_tolerances("off,3,3.0,0") == [None, 3.0, 0.0]
    with pytest.raises(UserError, match="neither 'off'"):
        parse_tolerances("off,-1")


def test_frontier_runs_end_to_end_and_writes_its_report(victim_path, tmp_path, monkeypatch):
    victims = tmp_path / "victims"
    victims.mkdir()
    shutil.copy(victim_path, victims / "mnist-5k-victim.pt")
    out = tmp_path / "frontier"
    s = parameters.parse(["frontier", "--datasets", "mnist-5k", "--attackers", "copycat",
                          "--profiles", "hard", "--budget", "128", "--accounts", "1,2", "--batches", "32,64",
                          "--deficit_tolerances", "off,0", "--victim_dir", str(victims), "--out_dir", str(out),
                          "--device", "cpu"])
    table, text = frontier(s)
    written = pd.read_csv(out / "frontier.csv")
    assert list(written.columns) == COLUMNS and len(written) == len(table)
    assert set(written["rule"]) == {"one-sided", "two-sided 0"}
    legit = written[written["kind"] == "legitimate"]
    assert set(legit["mode"]) == {"standard", "hard"} and set(legit["keys"]) == {1}
    attackers = written[written["kind"] == "attacker"]
    assert set(zip(attackers["keys"], attackers["batch"])) == {(1, 32), (1, 64), (2, 32), (2, 64)}
    assert written[written["mode"] == "copycat"]["accuracy"].notna().all()
    # priced in the server's answering time, which a busy machine (another test worker) moves batch by batch:
    # medians of 4 rows, and one more measurement when a stall made them cross; a real mispricing fails twice
    def ratios(frame):
        legit = frame[frame["kind"] == "legitimate"]
        return (legit[legit["mode"] == "standard"]["time_ratio"].median(),
                legit[legit["mode"] == "hard"]["time_ratio"].median(),
                frame[frame["mode"] == "copycat"]["over_legit"].min())

    standard, hard, copycat = ratios(written)
    if not (1.2 < standard < 3.5 and hard > 2 * standard and copycat > 10):
        again, _ = frontier(s.replace(out_dir=str(tmp_path / "frontier-again")))
        standard, hard, copycat = ratios(again)
    assert copycat > 10, "every split of copycat pays over 10x the standard user's price"
    assert 1.2 < standard < 3.5  # the calibrated budget, 2x
    assert hard > 2 * standard
    params = json.loads((out / "frontier.params.json").read_text())
    assert params["settings"]["deficit_tolerances"] == "off,0.0"
    assert (out / "frontier.png").stat().st_size > 0
    report = (out / "frontier.md").read_text()
    assert "## mnist-5k, two-sided 0" in report and "| copycat | attacker |" in report and report in text
    baseline = pd.read_csv(out / "mnist-5k" / "baseline" / "log.csv")
    assert json.loads((out / "mnist-5k" / "baseline" / "params.json").read_text())["seed"] == 1
    assert baseline["queries"].iloc[-1] == 256
    # stopped after its pricing, before its report: the rerun reads each rule's priced rows back
    for path in (out / "frontier.csv", out / "frontier.png", out / "frontier.md"):
        path.unlink()

    def price_again(*args):
        raise AssertionError("a rule priced by the stopped run was priced again")
    monkeypatch.setattr(frontier_module, "_price_all", price_again)
    resumed, _ = frontier(s)
    pd.testing.assert_frame_equal(resumed, written)


def test_a_rules_priced_rows_are_kept_and_read_back_only_for_the_same_settings(tmp_path):
    part = tmp_path / "priced" / "one-sided.csv"
    record = tmp_path / "priced" / "one-sided.params.json"
    victim = tmp_path / "victim.pt"
    victim.write_bytes(b"weights")
    calls = []

    def compute():
        calls.append(1)
        return [{c: (len(calls) if c == "keys" else 1.5) for c in COLUMNS}, {c: 2.5 for c in COLUMNS}]

    def kept(settings):
        return _kept(part, settings, compute, inputs=(victim,))[0]["keys"]

    settings = {"budget": 128, "accounts": "1,2", "out_dir": tmp_path}
    assert kept(settings) == 1 and part.is_file() and record.is_file()
    assert kept(settings) == 1 and len(calls) == 1, "the same settings and inputs: read back"
    assert kept({**settings, "budget": 256}) == 2, "other settings: priced again"
    victim.write_bytes(b"retrained")
    assert kept({**settings, "budget": 256}) == 3, "an input file changed: priced again"
    part.write_text(part.read_text().splitlines()[0] + "\n" + part.read_text().splitlines()[1] + "\n")
    assert kept({**settings, "budget": 256}) == 4, "a CSV cut short: priced again"
    older = record.read_text()
    assert kept({**settings, "budget": 512}) == 5
    record.write_text(older)  # killed after the CSV, before its record: the record is the earlier run's
    assert kept({**settings, "budget": 256}) == 6, "a CSV newer than its record: priced again"
    record.write_text("{cut short")
    assert kept({**settings, "budget": 256}) == 7, "an unreadable record: priced again"
    record.unlink()
    assert kept({**settings, "budget": 256}) == 8, "no record: priced again"
    assert kept({**settings, "budget": 256}) == 8
