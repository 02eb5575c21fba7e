"""reproduce: a tiny grid end to end, its report checked number for number against the run logs; resume
after an interruption; broken run folders redone; --list and --slurm; and a real SLURM job array where
the machine has one (.ci/run starts a single-node cluster with scripts/slurm.sh)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

import main as entry
from commands import grid as grid_cells
from commands import reproduce as grid_module
from common.errors import UserError
from common.process import PARENT_ENV
from extraction.state import finished
from tests.conftest import ROOT

TINY = ["--quick", "--modes", "copycat", "--datasets", "mnist-5k", "--budget", "64", "--device", "cpu"]


@pytest.fixture
def victims(victim_path, tmp_path):
    folder = tmp_path / "victims"
    folder.mkdir()
    shutil.copy(victim_path, folder / "mnist-5k-victim.pt")
    return folder


def grid(out, victims, *extra):
    return entry.parse(["reproduce", *TINY, "--out_dir", str(out), "--victim_dir", str(victims), *extra])


def test_a_tiny_grid_reports_what_its_logs_say(tmp_path, victims):
    out = tmp_path / "g"
    grid_module.reproduce(grid(out, victims), progress=False)
    report = (out / "report.md").read_text()
    summary = pd.read_csv(out / "summary.csv").set_index("mode")
    for mode in ("standard", "copycat"):
        log = pd.read_csv(next((out / "runs" / "mnist-5k").glob(f"{mode}-b64-s0")) / "log_pow.csv").iloc[-1]
        row = summary.loc[mode]
        assert row["queries"] == log["queries"] == 64
        assert row["accuracy"] == pytest.approx(log["accuracy"]) and row["fidelity"] == pytest.approx(log["fidelity"])
        assert row["ratio"] == pytest.approx(log["total_time_s"] / log["query_time_s"])
        assert row["time_pow_s"] == pytest.approx(log["total_time_s"])
        assert f"| {mode} | 1 | {log['accuracy']:.1f} | {log['fidelity']:.1f} | 64 |" in report
    legit, thief = summary.loc["standard", "ratio"], summary.loc["copycat", "ratio"]
    assert f"legitimate overhead <= 2x: not tested out of sample ({legit:.2f}x priced against its own run" in report
    from commands.report import _x
    assert f"attackers pay up to 100x: {'holds' if thief >= 100 else 'fails'} (copycat {_x(thief)}" in report
    growth = summary.loc["copycat", "cost_growth"]
    assert growth == pytest.approx((summary.loc["copycat", "privacy_cost"] / 64) / (summary.loc["standard",
                                                                                                "privacy_cost"] / 64))
    assert f"at most {growth:.2f}x, copycat" in report
    assert "The paper's numbers (mnist" in report and "| copycat | 93.46 |" in report
    for figure in ("accuracy_vs_time", "costs_vs_queries", "calibration_curve"):
        assert (out / "figures" / f"{figure}.png").stat().st_size > 1000
    assert list((out / ".cache").glob("*.reps.pt")), "the runs share the cached embedding"
    frontier = pd.read_csv(out / "frontier" / "frontier.csv")  # the grid's last cell, and the report's last part
    assert set(frontier[frontier["kind"] == "attacker"]["mode"]) == {"copycat"} and frontier["queries"].max() == 64
    assert "### mnist-5k, one-sided" in report and "![frontier](frontier/frontier.png)" in report


def test_an_interrupted_grid_resumes_without_redoing_a_finished_run(tmp_path, victims, monkeypatch):
    monkeypatch.setattr(grid_cells, "FRONTIER_DATASETS", ())  # the grid's runs only: the frontier is tested above
    monkeypatch.setattr(grid_cells, "GROWTH_DATASETS", ())  # and so is the cost-growth stage
    out = tmp_path / "g"
    real = grid_cells._run_in_process
    calls = []

    def one_then_stop(cell):
        if calls:
            raise KeyboardInterrupt
        calls.append(cell.name)
        real(cell)

    monkeypatch.setattr(grid_cells, "_run_in_process", one_then_stop)
    with pytest.raises(KeyboardInterrupt):
        grid_module.reproduce(grid(out, victims), progress=False)
    first = out / "runs" / calls[0]
    assert finished(first) is not None
    stamp = (first / "state.pt").stat().st_mtime_ns
    ran = []
    monkeypatch.setattr(grid_cells, "_run_in_process", lambda cell: (ran.append(cell.name), real(cell)))
    grid_module.reproduce(grid(out, victims), progress=False)
    assert calls[0] not in ran and ran == ["mnist-5k/copycat-b64-s0"]
    assert (first / "state.pt").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("damage", ["garbage-state", "log-without-state"])
def test_a_broken_run_folder_is_moved_aside_and_redone(tmp_path, victims, damage, monkeypatch):
    monkeypatch.setattr(grid_cells, "FRONTIER_DATASETS", ())  # the grid's runs only: the frontier is tested above
    out = tmp_path / "g"
    grid_module.reproduce(grid(out, victims), progress=False)
    folder = out / "runs" / "mnist-5k" / "copycat-b64-s0"
    if damage == "garbage-state":
        (folder / "state.pt").write_bytes(b"not a state")
    else:
        (folder / "state.pt").unlink()
    assert finished(folder) is None
    grid_module.reproduce(grid(out, victims, "--jobs", "2"), progress=False)  # redone by a worker process
    assert finished(folder) is not None
    assert (folder.parent / "copycat-b64-s0.broken-1").is_dir()
    assert "| copycat |" in (out / "report.md").read_text()


def test_list_and_slurm_cover_every_cell_in_dependency_order(tmp_path, victims):
    out = tmp_path / "g"
    s = entry.parse(["reproduce", "--modes", "copycat,knockoff", "--datasets", "mnist-5k", "--seeds", "2",
                          "--budget", "64", "--out_dir", str(out), "--victim_dir", str(victims), "--list"])
    _, text = grid_module.reproduce(s, progress=False)
    lines = text.splitlines()
    kinds = ["victim" if "train-victim" in ln else "baseline" if "--mode standard" in ln else
             "frontier" if "main.py frontier" in ln else "growth" if "main.py cost-growth" in ln else "attack"
             for ln in lines]
    assert kinds == ["victim"] + ["baseline"] * 2 + ["attack"] * 4 + ["growth", "frontier"]
    assert f"--victims mnist-5k={victims}/mnist-5k-victim.pt --ood_pools photos " in lines[-2]
    assert lines[-2].startswith(f"test -f {out}/cost_growth.csv && ") and "|| { rm -f " in lines[-2], \
        "a resubmitted grid keeps a finished cost-growth stage"
    assert "--attackers copycat,knockoff --budget 64" in lines[-1] and f"--out_dir {out}/frontier" in lines[-1]
    for seed in (0, 1):
        base = next(ln for ln in lines if "--mode standard" in ln and f"--seed {seed}" in ln)
        folder = re.search(r"--out_dir (\S+)", base).group(1)
        attacks = [ln for ln in lines if "--mode standard" not in ln and f"--seed {seed} " in ln and "extract" in ln]
        assert len(attacks) == 2 and all(f"--calibration {folder}/log.csv" in ln for ln in attacks)
    assert not out.exists(), "--list writes nothing"
    s = s.replace(list=False, slurm=True)
    submit, _ = grid_module.reproduce(s, progress=False)
    slurm = out / "slurm"
    stages = ("victims", "baselines", "attacks", "growths", "frontiers")
    assert [len((slurm / f"{k}.txt").read_text().splitlines()) for k in stages] == [1, 2, 4, 1, 1]
    assert [ln for k in stages for ln in (slurm / f"{k}.txt").read_text().splitlines()] == lines
    script = submit.read_text()
    assert script.index("victims:1") < script.index("baselines:2") < script.index("attacks:4") \
        < script.index("growths:1") < script.index("frontiers:1")
    assert "--dependency=afterok:$id" in script and "report.sh" in script


def test_a_grid_of_other_settings_or_a_broken_record_is_refused(tmp_path, victims, capsys):
    """Once a run has begun; before that, the grid is planned anew from the flags given (a grid refused
    before its first run, say for a --device this machine lacks, is rerun with the flag corrected)."""
    out = tmp_path / "g"
    out.mkdir()
    other = grid_module.grid_settings(grid(out, victims).replace(modes="knockoff"))
    (out / "grid.json").write_text(json.dumps(other))
    code = entry.main(["reproduce", *TINY, "--out_dir", str(out), "--victim_dir", str(victims), "--list"])
    assert code == 0 and "--mode copycat" in capsys.readouterr().out
    (out / "runs").mkdir()
    (out / "runs" / "mnist-5k").mkdir()
    for record, phrase in ((json.dumps(other), "holds a grid with other settings (budgets, modes)"),
                           ("{bad", "is not a grid record"), ("[]", "is not a complete grid record")):
        (out / "grid.json").write_text(record)
        code = entry.main(["reproduce", *TINY, "--out_dir", str(out), "--victim_dir", str(victims)])
        assert code == 2 and phrase in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["grid.json", "runs"], "nothing else was written"


def test_the_legitimate_verdict_is_judged_out_of_sample_when_seeds_allow():
    from commands.report import verdicts

    summary = pd.DataFrame([{"dataset": "d", "mode": "standard", "ratio": 2.0, "cost_growth": 1.0,
                             "entropy_growth": 1.0},
                            {"dataset": "d", "mode": "copycat", "ratio": 500.0, "cost_growth": 2.0,
                             "entropy_growth": 30.0}])
    assert "fails (2.50x, each seed's standard run priced against another seed's baseline)" in verdicts(
        summary, {"d": 2.5})[0]
    assert "holds (1.90x" in verdicts(summary, {"d": 1.9})[0]
    assert "not tested out of sample" in verdicts(summary)[0]


def test_a_tiny_grid_runs_as_a_real_slurm_job_array(tmp_path, victims):
    if shutil.which("sbatch") is None or subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        pytest.skip("no SLURM here: .ci/run starts a single-node cluster with scripts/slurm.sh (as root)")
    out = tmp_path / "g"
    grid_module.reproduce(grid(out, victims, "--slurm"), progress=False)
    submitted = subprocess.run(["bash", str(out / "slurm" / "submit.sh")], capture_output=True, text=True, cwd=ROOT)
    assert submitted.returncode == 0, submitted.stderr
    ids = re.findall(r"job(?: array)? (\d+)", submitted.stdout)
    deadline = time.time() + 240  # a failed array cancels its dependents (--kill-on-invalid-dep), emptying the queue
    while time.time() < deadline:
        queue = subprocess.run(["squeue", "-h", "-j", ",".join(ids)], capture_output=True, text=True).stdout
        if not queue.strip() and (out / "report.md").exists():
            break
        time.sleep(2)
    logs = "\n".join(p.read_text() for p in (out / "slurm" / "log").glob("*.out"))
    assert (out / "report.md").exists(), logs[-3000:]
    report = (out / "report.md").read_text()
    assert "legitimate overhead <= 2x" in report and "| copycat |" in report, logs[-2000:]


def test_a_grid_plans_budgets_its_pools_allow_and_refuses_others_before_training(tmp_path, victims):
    fixture = str(ROOT / "tests" / "data" / "mnist-idx")  # MNIST's layout: a pool of 24 test images
    s = entry.parse(["reproduce", "--datasets", "mnist", "--modes", "copycat,entropy,mixmatch", "--data_dir",
                          fixture, "--out_dir", str(tmp_path / "g"), "--victim_dir", str(victims)])
    budgets = grid_module.grid_settings(s)["budgets"]
    assert budgets == {"mnist/standard": 24, "mnist/copycat": 10_000, "mnist/entropy": 24, "mnist/mixmatch": 23}
    dfme = grid_module.grid_settings(s.replace(modes="dfme"))["budgets"]["mnist/dfme"]
    assert dfme == grid_module.FULL_DFME == 100_000, "DFME's default is what a CPU finishes; 2M is asked for"
    assert grid_module.grid_settings(s.replace(modes="dfme", dfme_budget=2_000_000))["budgets"]["mnist/dfme"] \
        == grid_module.PAPER_DFME
    asked = s.replace(budget=25)
    with pytest.raises(UserError, match=r"3 cell\(s\) would ask for more distinct queries.*mnist/standard \(25 "
                                        r"queries; its pool allows 24\)"):
        grid_module.reproduce(asked, progress=False)
    assert not (tmp_path / "g").exists() and not list(victims.glob("mnist-victim*")), "refused before anything was made"


def test_an_mnist_grid_sets_each_mode_beside_the_paper_with_verdicts_and_the_cost_growth_stage(tmp_path, victims):
    fixture = ROOT / "tests" / "data" / "mnist-idx"  # 60 training and 30 test digits in MNIST's layout
    pool = ROOT / "tests" / "data" / "image-folder" / "train"  # a folder of images as the attackers' pool
    out = tmp_path / "g"
    s = entry.parse(["reproduce", "--quick", "--datasets", "mnist", "--modes", "copycat,entropyrev",
                          "--budget", "16", "--query_batch", "8", "--data_dir", str(fixture), "--ood_pool", str(pool),
                          "--out_dir", str(out), "--victim_dir", str(victims), "--device", "cpu"])
    grid_module.reproduce(s, progress=False)
    assert json.loads((out / "grid.json").read_text())["ood_pool"] == str(pool)
    victim = json.loads((victims / "mnist-victim.pt.json").read_text())
    assert victim["recipe"]["lr_schedule"] == "plateau" and victim["recipe"]["shift"] == 0
    assert len(victim["history"]) == victim["epochs"] <= 50
    growth = pd.read_csv(out / "cost_growth.csv")
    assert set(growth["pool"]) == {"photos", str(pool)} and set(growth["knn_set"]) == {"mnist"}
    assert (growth["k"] == 60).all(), "k is capped at the 60 training images"
    report = (out / "report.md").read_text()
    assert "## mnist beside the paper (ours / the authors' CSVs)" in report
    summary = pd.read_csv(out / "summary.csv").set_index("mode")
    for mode, theirs in (("copycat", "93.5"), ("entropyrev", "98.3")):
        mine = summary.loc[mode]
        row = next(ln for ln in report.splitlines() if ln.startswith(f"| {mode} | {mine['accuracy']:.1f} / {theirs} |"))
        assert f"{mine['privacy_cost'] / mine['queries']:.3f} / " in row
        verdict = next(ln for ln in report.splitlines() if ln.startswith(f"- {mode}: "))
        gap = mine["accuracy"] - float(theirs)
        assert (("agrees" in verdict) == (abs(gap) <= 5 and "differs" not in verdict)) \
            and f"{gap:+.1f} points" in verdict
    copycat = next(ln for ln in report.splitlines() if ln.startswith("- copycat: "))
    assert "we sent 16 queries to the authors' 11,000" in copycat \
        and "our pool is image-folder/train, the authors' ImageNet" in copycat
    assert "the authors' 0.530 per query is beyond what our accountant (sigma 28, delta 1e-05, k 300) charges any " \
           "query, 0.244 at most" in copycat
    assert "What makes an attacker's kNN cost grow faster" in report and "Only read as the cost of reaching" in report


def test_a_grid_checks_its_pool_before_training_and_plans_within_a_small_folder(tmp_path, victims):
    fixture = str(ROOT / "tests" / "data" / "mnist-idx")

    def plan(*extra):
        return entry.parse(["reproduce", "--datasets", "mnist", "--modes", "copycat", "--query_batch", "8",
                                 "--data_dir", fixture, "--out_dir", str(tmp_path / "g"), "--victim_dir",
                                 str(victims), *extra])

    with pytest.raises(UserError, match="--ood_pool mnist is the victim's own data"):
        grid_module.reproduce(plan("--ood_pool", "mnist", "--list"), progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="holds no images"):
        grid_module.reproduce(plan("--ood_pool", str(empty), "--list"), progress=False)
    small = str(ROOT / "tests" / "data" / "image-folder")  # 33 images
    budgets = grid_module.grid_settings(plan("--ood_pool", small))["budgets"]
    assert budgets["mnist/copycat"] == 33, "copycat plans what the folder holds"
    with pytest.raises(UserError, match=r"mnist/standard-b24-s0: the grid plans 24 queries, below one batch of 64; "
                                        r"lower --query_batch"):
        grid_module.reproduce(plan("--query_batch", "64", "--list"), progress=False)
    assert not (tmp_path / "g").exists()
    with pytest.raises(SystemExit):
        entry.parse(["reproduce", "--ood_pool", "", "--out_dir", str(tmp_path / "g")])


CHILD = """
import os, sys, time
from common.process import PARENT_ENV, adopt_parent
adopt_parent()
print(os.getpid(), PARENT_ENV in os.environ, flush=True)
time.sleep(120)
"""
PARENT = """
import subprocess, sys
from common.process import child_env
ask = sys.argv[1] == "ask"
child = subprocess.Popen([sys.executable, "-c", sys.argv[2]], env=child_env() if ask else None)
child.wait()
"""


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    """Whether process `pid` has ended (a zombie counts: its parent, init, reaps it) within the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("ask", [True, False])
def test_a_child_that_asks_stops_when_its_parent_is_killed(ask):
    """A grid's runs (and a server's workers) stop when the grid is killed with SIGKILL; a child that did
    not ask outlives it (the check can fail), and the request does not pass on to the child's children."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, "ask" if ask else "no", CHILD], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    pid = None
    try:
        pid, passed_on = parent.stdout.readline().split()
        pid = int(pid)
        assert passed_on == "False"
        parent.kill()
        parent.wait()
        assert _gone(pid, 10.0 if ask else 1.0) == ask
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
        if pid is not None and not _gone(pid, 0):
            os.kill(pid, signal.SIGKILL)


def test_a_grid_starts_its_runs_as_children_that_stop_with_it(monkeypatch):
    seen = []

    class Proc:
        returncode = 0

        def __init__(self, argv, **kwargs):
            seen.append(kwargs["env"].get(PARENT_ENV))

        def communicate(self):
            return "", ""

    monkeypatch.setattr(grid_cells.subprocess, "Popen", Proc)
    monkeypatch.setattr(grid_cells.subprocess, "run", lambda argv, **kwargs: Proc(argv, **kwargs))
    cell = grid_cells.Cell("frontier", "mnist-5k", "frontier", ["frontier", "--help"])
    grid_cells._run_child(cell)
    grid_cells._Children().run(cell, threads=1)
    assert seen == [str(os.getpid())] * 2
