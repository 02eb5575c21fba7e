"""The extraction loop on real mnist-5k data: logs, params, repeatability, resume, PoW columns, demo."""
import json

import pandas as pd
import pytest
import torch

import main
import parameters
from attacks import ATTACKS
from commands.demo import demo
from commands.powtime import pow_time
from data.registry import create as create_spec
from data.registry import to_float
from extraction.loop import LOG_COLUMNS, run_extraction
from models import architectures
from models.training import predict_logits
from tests.conftest import SMALL_STEPS


def settings(victim_path, out_dir, *extra):
    return parameters.parse(["extract", "--victim_path", str(victim_path), "--out_dir", str(out_dir),
                             "--device", "cpu", "--budget", "128", "--batches_per_round", "1",
                             "--stolen_epochs", "10", *extra])


@pytest.mark.parametrize("mode", sorted(ATTACKS))
def test_every_attack_steals_something(victim_path, tmp_path, mode):
    # photo crops' labels are far harder to fit than digits': batches of 16 give the copy 4x the steps (at
    # batches of 64 copycat's copy fit 37.5% of its answers against a majority class of 38.7% on one CPU)
    fit_steps = ["--batch_size", "16"] if ATTACKS[mode].uses_ood_pool else []
    result = run_extraction(settings(victim_path, tmp_path, "--mode", mode, "--budget", "256", "--batches_per_round",
                                     "2", *SMALL_STEPS.get(mode, []), *fit_steps), progress=False)
    frame = pd.read_csv(result["log"])
    assert list(frame.columns) == LOG_COLUMNS
    assert frame["queries"].iloc[-1] == 256
    if not getattr(ATTACKS[mode], "keeps_queries", True):
        return _student_moved_toward_the_victim(victim_path, tmp_path)
    rounds = [torch.load(p, weights_only=True) for p in sorted((tmp_path / "queries").glob("round-*.pt"))]
    x = torch.cat([to_float(v) for r in rounds for v in r["xs"]])
    answers = torch.cat([a for r in rounds for a in r["answers"]])
    stolen = architectures.create("mnistnet", create_spec("mnist-5k"))
    stolen.load_state_dict(torch.load(tmp_path / "stolen.pt")["state_dict"])
    answers = answers.argmax(1) if answers.is_floating_point() else answers  # probabilities (knockoff)
    fit = (predict_logits(stolen, x, torch.device("cpu")).argmax(1) == answers).float().mean()
    majority = torch.bincount(answers).max() / len(answers)
    assert fit > majority + 0.02  # the copy learned more of the victim's answers than a constant guess
    if mode == "standard":
        assert frame["fidelity"].iloc[-1] > 50  # in-distribution queries generalise
    params = json.loads((tmp_path / "params.json").read_text())
    assert params["settings"]["mode"] == mode and params["seed"] == 0 and params["git_commit"]


def test_same_seed_same_run(victim_path, tmp_path):
    a = pd.read_csv(run_extraction(settings(victim_path, tmp_path / "a"), progress=False)["log"])
    b = pd.read_csv(run_extraction(settings(victim_path, tmp_path / "b"), progress=False)["log"])
    cols = ["queries", "accuracy", "fidelity", "privacy_cost", "entropy_cost", "gap_cost"]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_resume_continues_where_it_stopped(victim_path, tmp_path):
    whole = pd.read_csv(run_extraction(settings(victim_path, tmp_path / "w", "--budget", "256"),
                                       progress=False)["log"])
    run_extraction(settings(victim_path, tmp_path / "r", "--budget", "128"), progress=False)
    resumed = pd.read_csv(run_extraction(settings(victim_path, tmp_path / "r", "--budget", "256"),
                                         progress=False)["log"])
    cols = ["queries", "accuracy", "fidelity", "privacy_cost", "entropy_cost"]
    pd.testing.assert_frame_equal(whole[cols], resumed[cols])


def test_resume_refuses_other_settings(victim_path, tmp_path):
    from common.errors import UserError
    run_extraction(settings(victim_path, tmp_path), progress=False)
    with pytest.raises(UserError, match="--fresh"):
        run_extraction(settings(victim_path, tmp_path, "--sigma", "10"), progress=False)


def _student_moved_toward_the_victim(victim_path, run):
    """dfme keeps no queries, and needs ~30,000 to beat chance on real images (README): on fresh images of
    its saved generator, the trained copy's logits must be nearer the victim's than an untrained copy's."""
    from attacks.dfme import Generator, victim_logits
    from models.checkpoint import load_victim
    spec = create_spec("mnist-5k")
    state = torch.load(run / "state.pt", weights_only=True)
    nz = state["settings"]["dfme_nz"]
    generator = Generator(nz, spec.input_shape, state["settings"]["dfme_epsilon"])
    generator.load_state_dict(state["attack"]["generator"])
    victim, _ = load_victim(victim_path, spec)
    stolen, untrained = (architectures.create("mnistnet", spec) for _ in range(2))
    stolen.load_state_dict(torch.load(run / "stolen.pt")["state_dict"])
    with torch.no_grad():
        x = generator.eval()(torch.randn(512, nz, generator=torch.Generator().manual_seed(5)))
        target = victim_logits(torch.softmax(victim(x), 1))
        gaps = [(m.eval()(x) - target).abs().mean().item() for m in (stolen, untrained)]
    assert gaps[0] < 0.9 * gaps[1], gaps


def test_in_loop_pow_equals_pow_time(victim_path, tmp_path):
    base = run_extraction(settings(victim_path, tmp_path / "std"), progress=False)["log"]
    log = run_extraction(settings(victim_path, tmp_path / "cc", "--mode", "copycat", "--calibration", str(base)),
                         progress=False)["log"]
    in_loop = pd.read_csv(log)
    assert in_loop["pow_time_s"].notna().all()
    out = tmp_path / "priced.csv"
    result, _ = pow_time(main.parse(["pow-time", "--calibration", str(base), "--log", str(log),
                                           "--out", str(out)]))
    assert pd.read_csv(out)["pow_time_s"].tolist() == pytest.approx(in_loop["pow_time_s"].tolist())
    assert result["ratio"] > 2


def test_demo_meets_the_claims(victim_path, tmp_path):
    s = main.parse(["demo", "--victim_path", str(victim_path), "--out_dir", str(tmp_path), "--device", "cpu",
                          "--budget", "1024", "--stolen_epochs", "3"])
    table, text = demo(s, progress=False)
    ratio = dict(zip(table["mode"], table["ratio"]))
    assert ratio["standard"] <= 2.0 + 1e-9
    assert ratio["copycat"] >= 10 * ratio["standard"], ratio
    assert (tmp_path / "accuracy_vs_time.png").stat().st_size > 10_000
    assert (tmp_path / "summary.csv").exists() and (tmp_path / "params.json").exists()
    assert "ratio" in text


@pytest.mark.timed  # its real run solves on every core: scripts/test.sh runs it with the machine to itself
@pytest.mark.parametrize("puzzle", ["sha256", "hashcash"])
def test_real_pow_agrees_with_simulated(victim_path, tmp_path, puzzle):
    from pow.pricing import compare_real_simulated
    base = run_extraction(settings(victim_path, tmp_path / "std", "--budget", "256"), progress=False)["log"]

    def run(pow_mode, folder):
        return run_extraction(settings(
            victim_path, tmp_path / folder, "--mode", "copycat", "--budget", "256", "--calibration", str(base),
            "--max_factor", "20", "--pow", pow_mode, "--puzzle", puzzle, "--pow_subs", "4", "--workers", "2",
            "--stolen_epochs", "1"), progress=False)["log"]

    def agrees(result):  # noise of the puzzles themselves plus 30% for the live rate measurement
        return abs(result["difference_s"]) <= 4 * result["expected_sd_s"] + 0.3 * result["simulated_s"]

    simulated = run("simulated", "simulated")
    result = compare_real_simulated(simulated, run("real", "real"), tmp_path / "real" / "params.json")
    if not agrees(result):  # one scheduling stall of a second (seen once in CI) is not the model's error:
        # the real run is measured again, and a systematic disagreement still fails
        result = compare_real_simulated(simulated, run("real", "real-again"), tmp_path / "real-again" / "params.json")
    assert agrees(result), result
    assert result["simulated_s"] > 0.1


def test_summarize_prices_every_run_by_one_rule(victim_path, tmp_path):
    """A folder of runs (as experiments/attacks/*.sh write it) becomes one table and one figure; each
    run's own log.csv is left as it was and its priced copy goes beside it."""
    from commands.summary import summarize
    runs = tmp_path / "runs"
    for mode in ("standard", "entropy", "copycat"):
        run_extraction(settings(victim_path, runs / mode, "--mode", mode, "--budget", "1024",
                                "--batches_per_round", "2", "--stolen_epochs", "1"), progress=False)
    before = (runs / "copycat" / "log.csv").read_bytes()
    table, text = summarize(main.parse(["summarize", "--runs", str(runs)]), progress=False)
    assert table["mode"].tolist() == ["standard"] + [m for m in ATTACKS if m in ("copycat", "entropy")]
    ratio = dict(zip(table["mode"], table["ratio"]))
    assert ratio["standard"] == pytest.approx(2.0) and ratio["copycat"] > 10, ratio
    assert (runs / "copycat" / "log.csv").read_bytes() == before
    priced = pd.read_csv(runs / "copycat" / "log_pow.csv")
    assert priced["total_time_s"].iloc[-1] == pytest.approx(table.set_index("mode").loc["copycat", "time_pow_s"])
    assert (runs / "summary.params.json").exists() and (runs / "accuracy_vs_time.png").stat().st_size > 10_000


class _FlatFeeOracle:
    """An Oracle (models.oracle) that is neither the local victim nor a server: a VictimOracle's answers,
    and a flat fee of 1.5 s and 7 units of work each round, as a priced server would report it."""
    priced = True

    def __init__(self, inner):
        self.inner, self.settled = inner, []

    queries = property(lambda self: self.inner.queries)
    query_time_s = property(lambda self: self.inner.query_time_s)

    def query(self, x):
        return self.inner.query(x)

    def totals(self):
        return self.inner.totals()

    def settle(self, queries_before, time_before):
        from models.oracle import Payment
        self.settled.append((queries_before, self.inner.queries))
        return Payment(1.5, 7.0, 3.0)

    def describe(self):
        return {}

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)

    def close(self):
        raise AssertionError("an oracle passed in is its caller's to close")


def test_any_oracle_reaches_the_loop_the_same_way_and_its_payments_are_logged(victim_path, tmp_path):
    from models.checkpoint import load_victim
    from models.oracle import VictimOracle

    model, _ = load_victim(victim_path, create_spec("mnist-5k"), device=torch.device("cpu"))
    oracle = _FlatFeeOracle(VictimOracle(model, device=torch.device("cpu")))
    result = run_extraction(settings(victim_path, tmp_path, "--budget", "192"), oracle=oracle, progress=False)
    frame = pd.read_csv(result["log"])
    assert oracle.settled == [(0, 64), (64, 128), (128, 192)], "settled once a round, with the round's queries"
    assert frame["pow_time_s"].tolist() == [1.5, 3.0, 4.5] and frame["pow_work"].tolist() == [7.0, 14.0, 21.0]
    assert (frame["pow_difficulty"] == 3.0).all()
    assert frame["total_time_s"].tolist() == pytest.approx((frame["query_time_s"] + frame["pow_time_s"]).tolist())
