"""Calibration: the paper's formula on its own CSVs, and the relative calibration's guarantees."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.errors import UserError
from pow import calibration
from pow.calibration import Baseline, PaperCalibrator, RelativeCalibrator

PAPER = Path(__file__).resolve().parent / "data" / "paper"  # the paper's CSVs, shipped with the tests


def line_baseline(n=20, per_query=0.25, sd=0.0, seed=0):
    rng = np.random.default_rng(seed)
    q = np.arange(1, n + 1) * 64.0
    inc = per_query * 64 + rng.normal(0, sd, n)
    return Baseline(q, np.cumsum(inc), q * 0.01, "synthetic", "cost")


def test_paper_formula_on_paper_mnist_baseline():
    base = calibration.load_baseline(PAPER / "time_privacy_cost_mnist.csv", cost_measure="knn")
    cal = PaperCalibrator(base)
    assert cal.slope == pytest.approx(np.polyfit(base.queries, base.cost, 1)[0])
    frame = calibration.read_cost_log(PAPER / "time_privacy_cost_mnist.csv", cost_measure="knn")
    priced = calibration.add_pow_columns(frame, cal, cost="cost")
    # the legitimate user sits on its own line: about base**small seconds per 1,000 queries
    assert 1.0 < calibration.ratio(priced) < 1.2


def test_paper_step_is_clipped_and_symmetric():
    cal = PaperCalibrator(line_baseline(), base=1.0075, min_s=0.1, max_s=100)
    e = float(cal.expected(6400))
    assert cal.step_seconds(6400, e) == pytest.approx(1.0)
    assert cal.step_seconds(6400, e + 200) == pytest.approx(cal.step_seconds(6400, e - 200))
    assert cal.step_seconds(6400, e + 1e6) == pytest.approx(100)


def test_relative_legitimate_user_pays_exactly_the_budget():
    base = line_baseline(sd=1.0)
    cal = RelativeCalibrator(base, base=1.05, budget=1.0, tolerance=3.0)
    frame = pd.DataFrame({"queries": base.queries, "cost": base.cost, "query_time_s": base.time_s})
    priced = calibration.add_pow_columns(frame, cal, cost="cost")
    assert calibration.ratio(priced) == pytest.approx(2.0)
    other = line_baseline(sd=1.0, seed=7)  # another legitimate user, other random draw
    frame2 = pd.DataFrame({"queries": other.queries, "cost": other.cost, "query_time_s": other.time_s})
    assert calibration.ratio(calibration.add_pow_columns(frame2, cal, cost="cost")) <= 2.0 + 1e-9


def test_relative_attacker_pays_exponentially_then_capped():
    cal = RelativeCalibrator(line_baseline(), base=1.05, budget=1.0, tolerance=3.0, max_factor=1000)
    q = np.array([640.0])
    legit = cal.batch_seconds(q, cal.expected(q))
    one_batch_over = cal.batch_seconds(q, cal.expected(q) + cal.unit)
    assert one_batch_over / legit == pytest.approx(1.05)
    assert cal.batch_seconds(q, cal.expected(q) + 1e9) == pytest.approx(1000 * cal.batch_time_s)
    below = cal.batch_seconds(q, cal.expected(q) - 50)
    assert below == pytest.approx(legit)  # one-sided: a cheaper client is not slowed down


@pytest.mark.parametrize("deficit_tolerance", [0.0, 3.0, 6.0])
def test_relative_two_sided_prices_a_deficit_beyond_its_tolerance_only(deficit_tolerance):
    base = line_baseline(sd=2.0)
    one = RelativeCalibrator(base, tolerance=3.0)
    two = RelativeCalibrator(base, tolerance=3.0, deficit_tolerance=deficit_tolerance)
    q = 6400.0
    spread = two.batch_sd * np.sqrt(q / two.batch_size)
    e = float(two.expected(q))
    inside = e - deficit_tolerance * spread * 0.99
    assert float(two.multiplier(q, inside)) == pytest.approx(1.0)
    gap = 4 * two.unit  # four legitimate batches' worth of cost below the band: base ** 4
    below = e - deficit_tolerance * spread - gap
    assert float(one.multiplier(q, below)) == pytest.approx(1.0)  # one-sided: a cheaper client is not slowed
    assert float(two.multiplier(q, below)) == pytest.approx(1.05 ** 4)
    above = e + 3.0 * spread + gap  # the excess side is the same under both rules
    assert float(two.multiplier(q, above)) == pytest.approx(1.05 ** 4)
    assert float(one.multiplier(q, above)) == pytest.approx(1.05 ** 4)
    assert two.describe()["rule"] == "two-sided" and one.describe()["rule"] == "one-sided"


def test_relative_deficit_tolerance_must_be_a_finite_non_negative_number():
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(Exception, match="deficit_tolerance"):
            RelativeCalibrator(line_baseline(), deficit_tolerance=bad)


def test_read_cost_log_rejects_other_layouts(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="expected a run log"):
        calibration.read_cost_log(bad, cost_measure="entropy")
    with pytest.raises(UserError, match="does not exist"):
        calibration.read_cost_log(tmp_path / "none.csv", cost_measure="entropy")


def test_relative_legitimate_ratio_holds_under_load():
    """A baseline recorded on a busy machine (5.5x slower answers) still prices a legitimate user on a quiet
    machine at exactly 1 + budget: PoW is priced in the client's own answering time, not the baseline's."""
    busy = line_baseline(sd=1.0)
    busy = Baseline(busy.queries, busy.cost, busy.time_s * 5.5, "busy", "cost")
    cal = RelativeCalibrator(busy, base=1.05, budget=1.0, tolerance=3.0)
    quiet = line_baseline(sd=1.0, seed=3)
    frame = pd.DataFrame({"queries": quiet.queries, "cost": quiet.cost, "query_time_s": quiet.time_s})
    assert calibration.ratio(calibration.add_pow_columns(frame, cal, cost="cost")) == pytest.approx(2.0)
    slow = frame.assign(query_time_s=frame["query_time_s"] * 3)  # and on an even busier one
    assert calibration.ratio(calibration.add_pow_columns(slow, cal, cost="cost")) == pytest.approx(2.0)


def test_relative_time_floor_keeps_pow_on():
    """An answering time of zero never switches PoW off: dt is floored at a share of the baseline's."""
    cal = RelativeCalibrator(line_baseline(), base=1.05, budget=1.0, tolerance=3.0)
    q = np.array([640.0])
    seconds = cal.extra_seconds(576.0, q, cal.expected(q), time_prev=1.0, time_s=1.0)
    assert seconds == pytest.approx(calibration.MIN_TIME_SHARE * cal.batch_time_s)
