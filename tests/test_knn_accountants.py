"""Exact kNN votes against brute force; entropy/gap measures; ledger state."""
import math

import pytest
import torch

from privacy.accountants import EntropyAccountant, GapAccountant, KnnAccountant, Ledger, create
from privacy.knn import KnnVoter


def brute_votes(q, x, y, k, c):
    idx = torch.cdist(q.double(), x.double()).topk(k, dim=1, largest=False).indices
    return torch.nn.functional.one_hot(y[idx], c).sum(1)


@pytest.mark.parametrize("n,k", [(20000, 300), (2000, 50), (500, 300)])
def test_votes_match_brute_force(n, k):
    g = torch.Generator().manual_seed(n)
    y = torch.randint(0, 10, (n,), generator=g)
    logits = torch.randn(n, 10, generator=g) * 3
    logits[torch.arange(n), y] += 8
    x = torch.log_softmax(logits, 1)
    q = torch.log_softmax(torch.randn(700, 10, generator=g) * 4, 1)
    voter = KnnVoter(x, y, k=k, num_classes=10)
    votes = voter.votes(q)
    assert (votes.sum(1) == k).all()
    agree = (votes == brute_votes(q, x, y, k, 10)).all(1).float().mean()
    assert agree > 0.99  # exact up to ties at float32 distance resolution


def test_fallback_rows_are_exact():
    """Rows whose threshold catches fewer than k points take the full top-k: reached, and exact."""
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 10, (6000,), generator=g)
    x = torch.log_softmax(torch.randn(6000, 10, generator=g) * 3, 1)
    q = torch.log_softmax(torch.randn(40, 10, generator=g) * 3, 1)
    voter = KnnVoter(x, y, k=100, num_classes=10)
    assert voter.rank < voter.sample_t.shape[1]  # the thresholded path, not the all-points path
    voter.rank = 1  # the nearest sample point's distance: far fewer than k points fall below it
    calls = []
    full = voter._full
    voter._full = lambda rows: calls.append(len(rows)) or full(rows)
    votes = voter.votes(q)
    assert sum(calls) == len(q)  # every row went through the fallback
    assert (votes == brute_votes(q, x, y, 100, 10)).all(1).float().mean() > 0.99


def test_entropy_and_gap_scores():
    uniform = torch.full((1, 10), math.log(0.1))
    certain = torch.log(torch.tensor([[1.0] + [1e-12] * 9]))
    assert EntropyAccountant().score(uniform).item() == pytest.approx(1.0)
    assert EntropyAccountant().score(certain).item() == pytest.approx(0.0, abs=1e-9)
    assert GapAccountant().score(uniform).item() == pytest.approx(1.0)
    assert GapAccountant().score(certain).item() == pytest.approx(0.0, abs=1e-9)


def test_ledger_totals_grow_and_round_trip():
    g = torch.Generator().manual_seed(0)
    reps = torch.log_softmax(torch.randn(1000, 10, generator=g) * 3, 1)
    voter = KnnVoter(reps, torch.randint(0, 10, (1000,), generator=g), k=30, num_classes=10)
    make = lambda: Ledger([KnnAccountant(voter, sigma=28, delta=1e-5), create("entropy"), create("gap")])  # noqa
    ledger = make()
    seen = []
    for _ in range(3):
        ledger.add(torch.log_softmax(torch.randn(64, 10, generator=g), 1))
        seen.append(ledger.totals())
    for col in seen[0]:
        assert seen[0][col] < seen[1][col] < seen[2][col]
    copy = make()
    copy.load_state_dict(ledger.state_dict())
    assert copy.totals() == seen[-1]


def test_unknown_accountant_lists_names():
    with pytest.raises(ValueError, match="entropy, gap, knn"):
        create("pate2")


def test_one_voter_serves_concurrent_threads():
    """Scratch buffers are per thread: 8 threads voting at once get what one thread gets alone."""
    from concurrent.futures import ThreadPoolExecutor
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 10, (6000,), generator=g)
    x = torch.log_softmax(torch.randn(6000, 10, generator=g) * 3, 1)
    voter = KnnVoter(x, y, k=50, num_classes=10)
    queries = [torch.log_softmax(torch.randn(300, 10, generator=g) * 3, 1) for _ in range(16)]
    alone = [voter.votes(q) for q in queries]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(voter.votes, queries))
    assert all(torch.equal(a, b) for a, b in zip(alone, together))


def test_a_pate_measure_without_teachers_is_refused_not_dropped():
    from common.errors import ConfigError
    from privacy.accountants import ledger_factory

    reps, labels = torch.randn(20, 10).log_softmax(1), torch.arange(20) % 10
    common = dict(num_classes=10, k=5, sigma=28.0, delta=1e-5)
    with pytest.raises(ConfigError, match="pate.*teacher ensemble's votes; train one with train-teachers"):
        ledger_factory(reps, labels, measures=["entropy", "pate"], **common)
    kept = ledger_factory(reps, labels, measures=["entropy", "pate"], pate_sigma=1.0,
                          ensemble_votes=lambda images: torch.ones(len(images), 10), **common)()
    assert "pate_cost" in kept.columns and "entropy_cost" in kept.columns
    assert "pate_cost" not in ledger_factory(reps, labels, measures=["entropy"], **common)().columns
