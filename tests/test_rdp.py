"""Golden values and closed-form cases of the GNMax RDP maths (PATE 2018)."""
import math

import numpy as np
import pytest

from privacy import rdp
from privacy.accountants import cumulative_costs

SIGMA, DELTA = 28.0, 1e-5


def independent_eps(sigma, delta, orders=rdp.DEFAULT_ORDERS):
    return min(o / sigma ** 2 + math.log(1 / delta) / (o - 1) for o in orders)


def scalar_eps(votes, sigma, delta, orders=rdp.DEFAULT_ORDERS):
    """A plain-Python transcription of Prop. 7 and Thm. 6, independent of the vectorised code."""
    top = max(votes)
    i_star = votes.index(top)
    q = sum(0.5 * math.erfc((top - v) / (2 * sigma)) for i, v in enumerate(votes) if i != i_star)
    q = min(q, 1 - 1 / len(votes))
    best = float("inf")
    for lam in orders:
        value = lam / sigma ** 2
        mu2 = sigma * math.sqrt(-math.log(q))
        mu1 = mu2 + 1
        e1, e2 = mu1 / sigma ** 2, mu2 / sigma ** 2
        cond = mu2 > 1 and q <= math.exp((mu2 - 1) * e2) / ((mu1 / (mu1 - 1)) * (mu2 / (mu2 - 1))) ** mu2
        if cond and math.exp(e2) * q < 1 and lam < mu1:
            a = (1 - q) / (1 - (math.exp(e2) * q) ** ((mu2 - 1) / mu2))
            b = math.exp(e1) / q ** (1 / (mu1 - 1))
            value = math.log((1 - q) * a ** (lam - 1) + q * b ** (lam - 1)) / (lam - 1)
        best = min(best, value + math.log(1 / delta) / (lam - 1))
    return best


def test_uniform_votes_give_data_independent_value():
    eps, _ = rdp.eps_per_query(np.full((1, 10), 30), sigma=SIGMA, delta=DELTA)
    assert eps[0] == pytest.approx(independent_eps(SIGMA, DELTA), rel=1e-12)
    assert eps[0] == pytest.approx(0.24363767, abs=1e-7)


def test_unanimous_costs_less_than_split():
    votes = np.zeros((3, 10))
    votes[0, 0] = 300
    votes[1, :2] = [200, 100]
    votes[2, :2] = 150
    eps, _ = rdp.eps_per_query(votes, sigma=SIGMA, delta=DELTA)
    assert eps[0] == pytest.approx(0.16096219, abs=1e-7)  # the paper's floor at sigma=28
    assert eps[0] < eps[1] <= eps[2]


@pytest.mark.parametrize("votes", [[300] + [0] * 9, [250, 50] + [0] * 8, [220, 40, 40] + [0] * 7,
                                   [120, 100, 80] + [0] * 7])
@pytest.mark.parametrize("sigma", [10.0, 28.0])
def test_single_query_matches_hand_computation(votes, sigma):
    eps, _ = rdp.eps_per_query(np.array([votes]), sigma=sigma, delta=DELTA)
    assert eps[0] == pytest.approx(scalar_eps(votes, sigma, DELTA), rel=1e-9)


def test_log_q_matches_erfc_sum():
    votes = np.array([[200, 60, 40, 0, 0, 0, 0, 0, 0, 0]])
    direct = sum(0.5 * math.erfc((200 - v) / (2 * SIGMA)) for v in votes[0, 1:])
    assert rdp.log_q_gnmax(votes, sigma=SIGMA)[0] == pytest.approx(math.log(direct), rel=1e-10)


def test_cap_never_exceeds_data_independent():
    rng = np.random.default_rng(0)
    votes = rng.multinomial(300, rng.dirichlet(np.full(10, 0.3), size=200))
    logq = rdp.log_q_gnmax(votes, sigma=SIGMA)
    capped = rdp.rdp_data_dependent_gnmax(logq, sigma=SIGMA, cap=True)
    assert (capped <= rdp.rdp_data_independent_gnmax(sigma=SIGMA)[None, :] + 1e-15).all()
    raw = rdp.rdp_data_dependent_gnmax(logq, sigma=SIGMA)
    assert (capped <= raw + 1e-15).all()


def test_improved_conversion_is_tighter():
    r = rdp.rdp_data_independent_gnmax(sigma=SIGMA)
    classic, _ = rdp.rdp_to_eps(r, delta=DELTA)
    improved, _ = rdp.rdp_to_eps(r, delta=DELTA, conversion="improved")
    assert improved < classic


def test_cumulative_costs_are_monotone_and_compose():
    rng = np.random.default_rng(1)
    votes = rng.multinomial(300, rng.dirichlet(np.ones(10), size=50))
    table = cumulative_costs(votes, sigma=SIGMA, delta=DELTA)
    assert (np.diff(table["privacy_cost"]) > 0).all()
    assert (np.diff(table["privacy_eps"]) >= 0).all()
    assert table["privacy_cost"][-1] == pytest.approx(table["eps"].sum())
    # composing RDP is much cheaper than summing per-query epsilons
    assert table["privacy_eps"][-1] < table["privacy_cost"][-1]


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="sigma"):
        rdp.log_q_gnmax([[1, 2]], sigma=0)
    with pytest.raises(ValueError, match="delta"):
        rdp.rdp_to_eps(np.ones(3), orders=[2, 3, 4], delta=2)
    with pytest.raises(ValueError, match="classic, improved"):
        rdp.rdp_to_eps(np.ones(3), orders=[2, 3, 4], delta=1e-5, conversion="x")


def test_order_grid_has_no_gap_above_100():
    """sigma=28, delta=1e-6: the best order is near 105; the golden epsilon holds to 1e-5 relative."""
    votes = np.array([[4, 32, 4, 1, 26, 118, 54, 2, 24, 35]])
    eps, _ = rdp.eps_per_query(votes, sigma=28.0, delta=1e-6)
    assert eps[0] == pytest.approx(0.266771, rel=1e-5)
    orders = rdp.DEFAULT_ORDERS
    gaps = np.diff(orders)
    assert orders[0] == 2 and orders[-1] == pytest.approx(1000) and (gaps > 0).all()
    assert (gaps[orders[:-1] < 99.5] <= 0.5 + 1e-9).all()
    assert (gaps[orders[:-1] >= 99.5] / orders[:-1][orders[:-1] >= 99.5] <= 0.012).all()
