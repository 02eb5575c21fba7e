"""Every registered attack, through one metered oracle: exact budget, every column, resume, no bypass.
Parametrised over the registry, so a new attack is tested with no extra code. Plus the attacks' own
numerics (knockoff's rewards and bandit on degenerate inputs, the active-learning scores)."""
import math

import pandas as pd
import pytest
import torch

import parameters
from attacks import ATTACKS, AttackContext, create, knockoff
from attacks.active import entropy, top2_gap
from attacks.worstcase import surrogate_cost
from data.registry import create as create_spec
from extraction import loop
from extraction.loop import LOG_COLUMNS, run_extraction
from tests.conftest import SMALL_STEPS

DETERMINISTIC = ["round", "queries", "accuracy", "fidelity", "privacy_cost", "privacy_eps", "entropy_cost",
                 "gap_cost"]


ROWS_AT_150 = {"dfme": [112, 150]}  # one whole iteration per round; the last round shrinks its batch to fit


#: these tests check budgets, columns and resumes, not learning: mixmatch's epoch shrinks to 4 steps
FEW_STEPS = {"mixmatch": ["--mixmatch_steps", "4"]}


def settings(victim_path, out_dir, mode, *extra):
    return parameters.parse(["extract", "--mode", mode, "--victim_path", str(victim_path), "--out_dir", str(out_dir),
                             "--device", "cpu", "--budget", "150", "--batches_per_round", "1",
                             "--stolen_epochs", "1", *SMALL_STEPS.get(mode, []), *FEW_STEPS.get(mode, []), *extra])


@pytest.mark.parametrize("mode", sorted(ATTACKS))
def test_every_mode_spends_its_budget_through_the_one_oracle(victim_path, tmp_path, mode, monkeypatch):
    """Every image the victim's network sees is a metered query, the loop's one evaluation pass, or the
    ledger's one pass over the victim's training set: no attack reaches the victim another way."""
    seen = []
    real_load = loop.load_victim

    def counting_victim(*a, **k):
        model, meta = real_load(*a, **k)
        model.register_forward_hook(lambda m, inp, out: seen.append(len(inp[0])))
        return model, meta

    monkeypatch.setattr(loop, "load_victim", counting_victim)
    result = run_extraction(settings(victim_path, tmp_path, mode), progress=False)
    frame = pd.read_csv(result["log"])
    assert frame["queries"].tolist() == ROWS_AT_150.get(mode, [64, 128, 150])  # exactly the budget
    assert list(frame.columns) == LOG_COLUMNS
    assert frame[DETERMINISTIC].notna().all().all()
    splits_sizes = {"eval": 500, "victim": 3000}  # mnist-5k's fixed split
    assert sum(seen) == 150 + splits_sizes["eval"] + splits_sizes["victim"]


#: modes whose resume is another's: entropy and gap are entropyrev's ScoredPoolAttack with another score
SAME_RESUME = {"entropy": "entropyrev", "gap": "entropyrev"}


def test_the_modes_left_out_of_the_resume_test_resume_as_the_one_named():
    from attacks.base import ScoredPoolAttack
    for mode, like in SAME_RESUME.items():
        cls, other = ATTACKS[mode], ATTACKS[like]
        assert issubclass(cls, ScoredPoolAttack) and issubclass(other, ScoredPoolAttack)
        for method in ("select", "state_dict", "load_state_dict", "build_pool"):
            assert getattr(cls, method) is getattr(other, method) is getattr(ScoredPoolAttack, method), method


@pytest.mark.parametrize("mode", sorted(set(ATTACKS) - set(SAME_RESUME)))
def test_every_mode_resumes_to_the_same_log(victim_path, tmp_path, mode):
    """Stopped after its third round (its second, where the run has only three), then resumed to the end."""
    whole = pd.read_csv(run_extraction(settings(victim_path, tmp_path / "w", mode, "--budget", "278"),
                                       progress=False)["log"])
    assert len(whole) >= 3
    first = str(int(whole["queries"].iloc[min(2, len(whole) - 2)]))
    run_extraction(settings(victim_path, tmp_path / "r", mode, "--budget", first), progress=False)
    resumed = pd.read_csv(run_extraction(settings(victim_path, tmp_path / "r", mode, "--budget", "278"),
                                         progress=False)["log"])
    pd.testing.assert_frame_equal(whole[DETERMINISTIC], resumed[DETERMINISTIC])


def test_unknown_mode_lists_the_registry():
    with pytest.raises(ValueError, match=", ".join(sorted(ATTACKS))):
        create("steal", None)


def test_soft_target_mode_needs_probabilities(victim_path, tmp_path):
    from common.errors import UserError
    s = settings(victim_path, tmp_path, "knockoff", "--victim_output", "labels")
    with pytest.raises(UserError, match="--victim_output probs"):
        run_extraction(s, progress=False)
    assert settings(victim_path, tmp_path, "knockoff").victim_output == "probs"


# --- numerics --------------------------------------------------------------------------------------

def test_active_learning_scores():
    uniform = torch.full((1, 10), math.log(0.1))
    sure = torch.log(torch.tensor([[1.0] + [0.0] * 9]))
    assert entropy(uniform).item() == pytest.approx(math.log(10))
    assert entropy(sure).item() == 0.0  # 0 log 0 counts as 0, not NaN
    assert top2_gap(sure).item() == 1.0 and top2_gap(uniform).item() == pytest.approx(0.0)


def test_worstcase_prices_with_the_defenders_formula():
    lp = torch.log_softmax(torch.randn(20, 10, generator=torch.Generator().manual_seed(0)) * 3, 1)
    e = surrogate_cost(lp, "entropy", k=300, sigma=28.0, delta=1e-5)
    assert torch.allclose(e, (entropy(lp) / math.log(10)).double().clamp(0, 1), atol=1e-6)
    knn = surrogate_cost(lp, "knn", k=300, sigma=28.0, delta=1e-5)
    assert ((knn >= 0.16) & (knn <= 0.245)).all()  # the private-kNN bounds at sigma=28, delta=1e-5


@pytest.mark.parametrize("y", [
    torch.zeros(3, 10), torch.eye(10)[:3], torch.full((3, 10), float("nan")),
    torch.tensor([[float("inf")] + [0.0] * 9] * 3), torch.full((3, 10), 0.1)])
def test_knockoff_rewards_are_finite_on_degenerate_answers(y):
    stolen = torch.log(torch.tensor([[1.0] + [0.0] * 9] * 3))  # log 0 in the stolen prediction too
    r = knockoff.rewards(y, stolen, recent=torch.zeros((0, 10)))
    assert r.shape == (3,) and torch.isfinite(r).all()
    r2 = knockoff.rewards(y, stolen, recent=torch.eye(10)[:5].double())
    assert torch.isfinite(r2).all()


def test_knockoff_policy_never_overflows():
    prefs = torch.tensor([1e308, -1e308, 0.0, 800.0], dtype=torch.float64)
    p = knockoff.policy(prefs, torch.tensor([True, True, True, False]))
    assert torch.isfinite(p).all() and p.sum().item() == pytest.approx(1.0) and p[3] == 0


def test_knockoff_bandit_zero_spread_and_learning():
    spec = create_spec("mnist-5k")
    ctx = AttackContext(spec, torch.zeros((10, 1, 28, 28), dtype=torch.uint8), budget=64, seed=0,
                        sampling="adaptive")
    attack = knockoff.KnockoffAttack(ctx)
    for _ in range(5):
        attack._update(0, 1.0)  # the same reward again and again: zero spread, no step, no NaN
    assert torch.equal(attack.preferences, torch.zeros_like(attack.preferences))
    for i in range(40):  # arm 1 pays more: its preference grows
        attack._update(1, 2.0)
        attack._update(2, 0.0)
    assert attack.preferences[1] > attack.preferences[2] and torch.isfinite(attack.preferences).all()


def test_adaptive_knockoff_resumes_to_the_same_log(victim_path, tmp_path):
    extra = ("--sampling", "adaptive")
    whole = pd.read_csv(run_extraction(settings(victim_path, tmp_path / "w", "knockoff", *extra, "--budget", "192"),
                                       progress=False)["log"])
    run_extraction(settings(victim_path, tmp_path / "r", "knockoff", *extra, "--budget", "64"), progress=False)
    resumed = pd.read_csv(run_extraction(settings(victim_path, tmp_path / "r", "knockoff", *extra, "--budget", "192"),
                                         progress=False)["log"])
    pd.testing.assert_frame_equal(whole[DETERMINISTIC], resumed[DETERMINISTIC])


def test_jacobian_step_moves_along_the_sign_of_the_gradient():
    """On a linear model the step is lambda * sign(w_y) per pixel, clipped to [0, 1]."""
    from attacks.jacobian import jacobian_step
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, -1.0, 2.0, 0.5], [-1.0, 1.0, 0.0, -3.0], [0.0, 0.0, 0.0, 0.0]]))
    x = torch.full((2, 1, 2, 2), 0.5)
    x[1, 0, 0, 0] = 0.95
    out = jacobian_step(model, x, torch.tensor([0, 1]), 0.1, torch.device("cpu"))
    assert torch.allclose(out[0].flatten(), torch.tensor([0.6, 0.4, 0.6, 0.6]))
    assert torch.allclose(out[1].flatten(), torch.tensor([0.85, 0.6, 0.5, 0.4]))  # sign(0) = 0
    flipped = jacobian_step(model, x[:1], torch.tensor([0]), -0.1, torch.device("cpu"))
    assert torch.allclose(flipped.flatten(), torch.tensor([0.4, 0.6, 0.4, 0.4]))


def test_jacobian_generations_and_sign_flip(victim_path, tmp_path):
    """Generation 0 is the seed set (150 on 28x28 data); each later one augments the previous; jacobiantr
    flips lambda every TAU generations; a budget below the seed set is refused."""
    from attacks.jacobian import TAU, JacobianTrAttack
    from common.errors import UserError
    spec = create_spec("mnist-5k")
    pool = torch.randint(0, 255, (400, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(UserError, match="seed set of 150"):
        JacobianTrAttack(AttackContext(spec, pool, budget=100, seed=0))
    attack = JacobianTrAttack(AttackContext(spec, pool, budget=2000, seed=0, jacobian_cap=40))
    stolen = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    sizes, steps = [], []
    while attack.generation <= TAU + 1:
        g = attack.generation
        steps.append((g, attack._step()))
        x = attack.select(64, stolen)
        attack.observe(x, torch.randint(0, 10, (len(x),)))
        sizes.append((g, len(x)))
    per_gen = {}
    for g, n in sizes:
        per_gen[g] = per_gen.get(g, 0) + n
    assert per_gen[0] == 150 and all(per_gen[g] == 40 for g in range(1, TAU + 2))  # the cap
    signs = dict(steps)
    assert signs[1] > 0 and signs[TAU] < 0


def test_jacobian_cap_with_a_huge_seed():
    spec = create_spec("mnist-5k")
    pool = torch.randint(0, 255, (200, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    from attacks.jacobian import JacobianAttack
    attack = JacobianAttack(AttackContext(spec, pool, budget=400, seed=2 ** 63 - 1, jacobian_cap=10))
    stolen = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    while attack.generation < 2:
        x = attack.select(64, stolen)
        attack.observe(x, torch.randint(0, 10, (len(x),)))
    assert attack.bounds[2] - attack.bounds[1] == 10


# --- mixmatch and dfme ------------------------------------------------------------------------------

def test_mixmatch_sharpening():
    from attacks.mixmatch import sharpen
    p = torch.tensor([[0.6, 0.4], [1.0, 0.0], [0.5, 0.5]])
    out = sharpen(p, 0.5)
    assert torch.allclose(out[0], torch.tensor([0.36, 0.16]) / 0.52)  # p^2, renormalised
    assert torch.allclose(out[1], torch.tensor([1.0, 0.0])) and torch.allclose(out[2], torch.tensor([0.5, 0.5]))
    assert torch.allclose(sharpen(p, 1.0), p)  # T = 1 changes nothing
    assert torch.isfinite(sharpen(torch.tensor([[1e-40, 1.0]]), 0.1)).all()


def test_mixmatch_mixup_keeps_each_mix_nearer_its_own_image():
    from attacks.mixmatch import mixup
    x, y = torch.arange(4.0).view(4, 1), torch.eye(4)
    perm = torch.tensor([1, 0, 3, 2])
    for lam in (0.3, 0.7):  # 0.3 becomes 0.7: lambda' = max(lambda, 1 - lambda)
        mx, my = mixup(x, y, lam, perm)
        assert torch.allclose(mx.flatten(), 0.7 * x.flatten() + 0.3 * x[perm].flatten())
        assert torch.allclose(my.sum(1), torch.ones(4)) and (my.argmax(1) == torch.arange(4)).all()


def test_mixmatch_loss_guesses_from_k_views_and_weights_the_unlabelled_part():
    from attacks.mixmatch import guess_labels, mixmatch_loss
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    views = [torch.rand(5, 1, 2, 2) for _ in range(2)]
    q = guess_labels(model, views, 0.5)
    assert q.shape == (5, 3) and torch.allclose(q.sum(1), torch.ones(5))
    x_l, y_l = torch.rand(5, 1, 2, 2), torch.eye(3)[[0, 1, 2, 0, 1]]
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(2)
    total, loss_l, loss_u = mixmatch_loss(model, x_l, y_l, views, t=0.5, alpha=0.75, lambda_u=75.0, generator=g)
    assert torch.isclose(total, loss_l + 75.0 * loss_u)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_wide_resnet_28_2():
    from models.architectures import WideResNet
    model = WideResNet(28, 2)
    assert 1.4e6 < sum(p.numel() for p in model.parameters()) < 1.6e6
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_forward_differences_estimate_the_gradient_with_one_call():
    """On L(x) = w . x the estimate averages to w; loss_fn is called once on (m + 1) * B points."""
    from attacks.dfme import forward_differences
    torch.manual_seed(0)
    w = torch.randn(1, 1, 4, 4)
    calls = []

    def loss_fn(points):
        calls.append(len(points))
        return (points * w).flatten(1).sum(1)

    x = torch.rand(3, 1, 4, 4)
    base, grad = forward_differences(loss_fn, x, directions=4000, epsilon=1e-3)
    assert calls == [3 * 4001]
    assert torch.allclose(base, (x * w).flatten(1).sum(1))
    cos = torch.nn.functional.cosine_similarity(grad.flatten(1), w.flatten(1).expand(3, -1), dim=1)
    assert (cos > 0.95).all()


def dfme_attack(budget, batch, **options):
    from attacks.dfme import DfmeAttack, DfmeOptions
    spec = create_spec("mnist-5k")
    ctx = AttackContext(spec, torch.zeros((0, 1, 28, 28), dtype=torch.uint8), budget=budget, seed=0,
                        query_batch=batch, options=DfmeOptions(**options))
    return DfmeAttack(ctx)


def counting_query():
    sizes = []

    def query(x):
        assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1  # every moved copy is a valid image
        sizes.append(len(x))
        return torch.softmax(torch.randn(len(x), 10), 1)
    return query, sizes


def test_dfme_query_count_per_iteration():
    """One iteration of batch B costs B * ((m + 1) * n_G + n_S): every forward difference is a query."""
    options = dict(dfme_directions=3, dfme_generator_steps=2, dfme_student_steps=4, dfme_nz=8)
    attack = dfme_attack(10_000, 16, **options)
    stolen = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    query, sizes = counting_query()
    attack.run_round(query, stolen, 16 * 12)
    assert sum(sizes) == 16 * ((3 + 1) * 2 + 4) and sizes == [16 * 4, 16 * 4] + [16] * 4
    assert attack.iterations == 1
    for n in (1, 11, 12, 13, 200, 1001):  # any round size is spent exactly
        sizes.clear()
        attack.run_round(query, stolen, n)
        assert sum(sizes) == n
    assert attack.round_queries(100) == 192 and attack.round_queries(1000) == 960


def test_dfme_refuses_a_budget_below_one_iteration():
    from common.errors import UserError
    with pytest.raises(UserError, match="costs 448 queries.*raise --budget to at least 448"):
        dfme_attack(447, 64)
    dfme_attack(448, 64)


def test_dfme_logit_approximation_is_finite_at_zero_probability():
    from attacks.dfme import victim_logits
    z = victim_logits(torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]]))
    assert torch.isfinite(z).all() and torch.allclose(z.mean(1), torch.zeros(2), atol=1e-6)
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    assert torch.allclose(victim_logits(torch.softmax(logits, 1)), logits - logits.mean(), atol=1e-5)


def test_dfme_state_stays_the_size_of_its_models(victim_path, tmp_path):
    """No query is saved: the state after 3 rounds is the size of the state after 1 (plus 2 log rows)."""
    sizes = {}
    for budget in ("112", "336"):
        out = tmp_path / budget
        run_extraction(settings(victim_path, out, "dfme", "--budget", budget), progress=False)
        sizes[budget] = (out / "state.pt").stat().st_size
        rounds = sorted((out / "queries").glob("round-*.pt"))
        assert len(rounds) == int(budget) // 112
        assert all(torch.load(r, weights_only=True) == {"xs": [], "answers": []} for r in rounds)
    assert abs(sizes["336"] - sizes["112"]) < 4096


def test_the_oracle_refuses_non_finite_images(victim_path):
    """NaN images would cost nothing under entropy: the metered path refuses them before answering."""
    from common.errors import UserError
    from models.checkpoint import load_victim
    from models.oracle import VictimOracle
    from privacy.accountants import Ledger
    from privacy.accountants import create as create_accountant
    model, _ = load_victim(victim_path, create_spec("mnist-5k"))
    oracle = VictimOracle(model, device=torch.device("cpu"), ledger=Ledger([create_accountant("entropy")]))
    x = torch.rand(4, 1, 28, 28)
    x[2, 0, 5, 5] = float("nan")
    with pytest.raises(UserError, match="NaN or infinite pixels"):
        oracle.query(x)
    assert oracle.queries == 0 and oracle.totals()["entropy_cost"] == 0.0
    oracle.query(torch.rand(4, 1, 28, 28))
    assert oracle.queries == 4
