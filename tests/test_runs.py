"""Results are never lost or mixed: the run folder's state is the single source of truth.

Each test is named after what it protects. The crash test SIGKILLs real `extract` processes at several
points, inside the atomic write of state.pt among them, and checks that the resumed log equals an
uninterrupted run's.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

import main
import parameters
from commands.demo import demo
from commands.victim import train_victim
from common.errors import UserError
from common.io import FolderLock, strict_json
from extraction import loop
from extraction.loop import run_extraction
from tests.conftest import ROOT

DETERMINISTIC = ["round", "queries", "accuracy", "fidelity", "privacy_cost", "privacy_eps", "entropy_cost",
                 "gap_cost"]


def args(victim_path, out_dir, *extra):
    return ["extract", "--victim_path", str(victim_path), "--out_dir", str(out_dir), "--device", "cpu",
            "--budget", "128", "--batches_per_round", "1", "--stolen_epochs", "1", *extra]


def run(victim_path, out_dir, *extra):
    return run_extraction(parameters.parse(args(victim_path, out_dir, *extra)), progress=False)


def read_log(out_dir):
    return pd.read_csv(out_dir / "log.csv")


# --- never overwrite a file the user named ------------------------------------------------------

@pytest.mark.parametrize("content", ["text", "other-dataset", "raw-state-dict"])
def test_demo_never_overwrites_victim_path(victim_path, tmp_path, content):
    target = tmp_path / "victim.pt"
    if content == "text":
        target.write_text("my notes, not a checkpoint\n")
    elif content == "other-dataset":
        blob = torch.load(victim_path, weights_only=True)
        blob["meta"]["dataset"] = "fashion-mnist"
        torch.save(blob, target)
    else:
        torch.save({"w": torch.zeros(3)}, target)
    before = target.read_bytes()
    s = main.parse(["demo", "--victim_path", str(target), "--out_dir", str(tmp_path / "out"),
                          "--device", "cpu", "--budget", "128"])
    with pytest.raises(UserError, match=str(target)):
        demo(s, progress=False)
    assert target.read_bytes() == before
    assert not (tmp_path / "out" / "standard").exists()


def test_train_victim_refuses_existing_file(tmp_path):
    target = tmp_path / "v.pt"
    target.write_text("keep me")
    s = parameters.parse(["train-victim", "--victim_path", str(target), "--epochs", "1", "--device", "cpu"])
    with pytest.raises(UserError, match="--overwrite"):
        train_victim(s, progress=False)
    assert target.read_text() == "keep me"


# --- the log always agrees with the state -------------------------------------------------------

@pytest.mark.parametrize("damage", ["deleted", "garbage", "truncated"])
def test_finished_run_rebuilds_its_log(victim_path, tmp_path, damage):
    run(victim_path, tmp_path)
    whole = read_log(tmp_path)
    log = tmp_path / "log.csv"
    if damage == "deleted":
        log.unlink()
    elif damage == "garbage":
        log.write_text("\x00garbage,,\n1,2\n")
    else:
        log.write_text(log.read_text().splitlines()[0] + "\n")
    result = run(victim_path, tmp_path)
    pd.testing.assert_frame_equal(read_log(tmp_path), whole)
    assert result["final"]["queries"] == 128


def test_a_finished_run_writes_strict_json(victim_path, tmp_path):
    """DONE.json and params.json hold no NaN (not JSON: jq and browsers refuse it); a log column the run
    does not fill is null."""
    run(victim_path, tmp_path)

    def refuse(constant):
        raise AssertionError(f"{constant} in a JSON file")
    done = json.loads((tmp_path / "DONE.json").read_text(), parse_constant=refuse)
    json.loads((tmp_path / "params.json").read_text(), parse_constant=refuse)
    assert done["final"]["pate_eps"] is None and done["final"]["queries"] == 128
    assert strict_json({"a": (np.float32("nan"), float("-inf"), 1.5, 2, True), "b": [np.int64(3)]}) == {
        "a": [None, None, 1.5, 2, True], "b": [3]}


def test_resume_with_smaller_budget_is_refused(victim_path, tmp_path):
    run(victim_path, tmp_path, "--budget", "256")
    before = (tmp_path / "log.csv").read_bytes()
    with pytest.raises(UserError, match="already holds 256 queries, more than --budget 128"):
        run(victim_path, tmp_path, "--budget", "128")
    assert (tmp_path / "log.csv").read_bytes() == before


def test_a_changed_setting_the_run_reads_is_refused_and_others_are_not(victim_path, tmp_path):
    run(victim_path, tmp_path, "--budget", "64")
    with pytest.raises(UserError, match=r"other settings \(k\)"):
        run(victim_path, tmp_path, "--budget", "128", "--k", "7")
    run(victim_path, tmp_path, "--budget", "128", "--dfme_nz", "8", "--mixmatch_steps", "3")  # other modes' flags
    assert read_log(tmp_path)["queries"].iloc[-1] == 128


@pytest.mark.parametrize("own", [False, True])
def test_a_state_saved_before_identities_resumes_on_the_settings_it_reads(victim_path, tmp_path, own):
    """A state saved before a run's identity was (no "identity" key) is compared on the settings this run
    reads: another mode's or command's flag saved with it never blocks the resume; one of its own does."""
    run(victim_path, tmp_path, "--budget", "64")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    del state["identity"]
    state["resolved"].update({"dfme_nz": 999, "rate": 1.0, **({"k": 7} if own else {})})
    torch.save(state, tmp_path / "state.pt")
    if own:
        with pytest.raises(UserError, match=r"other settings \(k\)"):
            run(victim_path, tmp_path, "--budget", "128")
    else:
        run(victim_path, tmp_path, "--budget", "128")
        assert read_log(tmp_path)["queries"].iloc[-1] == 128


def test_missing_state_is_refused_not_restarted(victim_path, tmp_path):
    run(victim_path, tmp_path, "--budget", "256")
    (tmp_path / "state.pt").unlink()
    before = (tmp_path / "log.csv").read_bytes()
    with pytest.raises(UserError, match="state.pt does not.*--fresh"):
        run(victim_path, tmp_path, "--budget", "256")
    assert (tmp_path / "log.csv").read_bytes() == before


def test_interrupted_fresh_never_mixes_runs(victim_path, tmp_path, monkeypatch):
    run(victim_path, tmp_path)
    params_before = (tmp_path / "params.json").read_bytes()

    def killed(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(loop, "train_epochs", killed)
        with pytest.raises(KeyboardInterrupt):
            run(victim_path, tmp_path, "--fresh", "--seed", "1")
    assert not (tmp_path / "state.pt").exists()  # the old state was made unusable first
    assert (tmp_path / "params.json").read_bytes() == params_before  # unchanged before the first commit
    with pytest.raises(UserError, match="--fresh"):
        run(victim_path, tmp_path)  # seed 0 again: refused, never mixed with seed 1
    run(victim_path, tmp_path, "--fresh", "--seed", "1")
    assert json.loads((tmp_path / "params.json").read_text())["seed"] == 1
    assert read_log(tmp_path)["queries"].tolist() == [64, 128]


def _baseline(victim_path, tmp_path):
    base = tmp_path / "std"
    run(victim_path, base, "--budget", "256")
    path = tmp_path / "baseline.csv"
    shutil.copy(base / "log.csv", path)
    return path


@pytest.mark.parametrize("which", ["calibration", "victim_path"])
def test_changed_input_is_refused(victim_path, tmp_path, which):
    baseline = _baseline(victim_path, tmp_path)
    victim = tmp_path / "victim.pt"
    shutil.copy(victim_path, victim)
    out = tmp_path / "cc"
    run(victim, out, "--mode", "copycat", "--calibration", str(baseline))
    if which == "calibration":
        frame = pd.read_csv(baseline)
        frame["entropy_cost"] *= 2
        frame.to_csv(baseline, index=False)
    else:
        blob = torch.load(victim, weights_only=True)
        blob["meta"]["note"] = "retrained"
        torch.save(blob, victim)
    with pytest.raises(UserError, match=f"content of --{which} changed"):
        run(victim, out, "--mode", "copycat", "--calibration", str(baseline), "--budget", "256")


# --- loading state runs no code; a wrong-shaped state is a clear error ---------------------------

class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("shape", ["pickle", "victim", "missing-keys", "truncated-rows", "text", "folder"])
def test_bad_state_is_a_clear_error(victim_path, tmp_path, shape):
    out = tmp_path / "run"
    run(victim_path, out, "--budget", "256")
    state_path = out / "state.pt"
    marker = tmp_path / "ran"
    state = torch.load(state_path, weights_only=True)
    if shape == "pickle":
        torch.save({**state, "attack": _Evil(marker)}, state_path)
    elif shape == "victim":
        shutil.copy(victim_path, state_path)
    elif shape == "missing-keys":
        torch.save({k: v for k, v in state.items() if k != "oracle"}, state_path)
    elif shape == "truncated-rows":
        torch.save({**state, "rows": state["rows"][:2]}, state_path)
    elif shape == "text":
        state_path.write_text("hello")
    else:
        state_path.unlink()
        state_path.mkdir()
    with pytest.raises(UserError, match="--fresh"):
        run(victim_path, out, "--budget", "256")
    assert not marker.exists()


def test_stale_temporary_files_are_removed(victim_path, tmp_path):
    run(victim_path, tmp_path)
    stale = [tmp_path / ".state.pt.abc123.tmp", tmp_path / ".log.csv.x.tmp"]
    for p in stale:
        p.write_bytes(b"half-written")
    keep = tmp_path / ".notes.tmp"
    keep.write_text("not ours")
    run(victim_path, tmp_path)
    assert not any(p.exists() for p in stale) and keep.exists()


def test_resume_accepts_other_spellings_of_paths(victim_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(victim_path, tmp_path / "v.pt")
    run("v.pt", "dir", "--data_dir", "data")
    for out, data in (("dir/", "data/"), ("./dir", "./data"), (str(tmp_path / "dir"), str(tmp_path / "data"))):
        run("./v.pt", out, "--data_dir", data, "--budget", "192")
    shutil.copytree(tmp_path / "dir", tmp_path / "copy")
    assert run("v.pt", "copy", "--data_dir", "data", "--budget", "256")["final"]["queries"] == 256


def test_one_process_per_run_folder(victim_path, tmp_path):
    with FolderLock(tmp_path, "test"):
        with pytest.raises(UserError, match="another extraction run is using"):
            run(victim_path, tmp_path)
    assert not (tmp_path / "log.csv").exists()


# --- crash test: SIGKILL, then resume -----------------------------------------------------------

KILLER = textwrap.dedent("""
    import os, signal, sys
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    target, nth = {target!r}, {nth}
    calls = [0]
    real_replace = os.replace
    def replace(src, dst, *a, **k):
        if os.path.basename(str(dst)) == target:
            calls[0] += 1
            if calls[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)  # the temporary file is written, the rename not done
        return real_replace(src, dst, *a, **k)
    os.replace = replace
    def step(optimizer, args, kwargs):
        if target == {STEP!r}:
            calls[0] += 1
            if calls[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)  # in the middle of a round's training, no file open
    register_optimizer_step_pre_hook(step)
    import main
    sys.exit(main.main({argv!r}))
""")
STEP = "optimizer-step"  # a KILLER target: the nth optimizer step of the copy's training (5: in round 3 of 4)


def _extract(argv, target="", nth=0):
    code = KILLER.format(target=target, nth=nth, argv=argv, STEP=STEP)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    return proc.returncode, proc.stderr


@pytest.fixture(scope="module")
def uninterrupted(victim_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    rc, err = _extract(args(victim_path, out, "--budget", "256"))
    assert rc == 0, err
    return read_log(out)


@pytest.mark.parametrize("kill", [("state.pt", 2), ("state.pt", 4), ("log.csv", 3), ("round-000003.pt", 1),
                                  (STEP, 5)],
                         ids=["in-state-write-2", "in-last-state-write", "between-state-and-log",
                              "in-queries-write-3", "mid-training"])
def test_sigkill_then_resume_equals_uninterrupted(victim_path, tmp_path, uninterrupted, kill):
    target, nth = kill
    argv = args(victim_path, tmp_path, "--budget", "256")
    rc, err = _extract(argv, target, nth)
    assert rc == -signal.SIGKILL, f"the run ended before the kill, so the case checks nothing: {err}"
    if target == STEP:
        assert (tmp_path / "state.pt").is_file() and not (tmp_path / "DONE.json").exists(), "killed mid-run"
    else:
        assert list(tmp_path.rglob(f".{target}.*.tmp")), "the kill came inside the atomic write"
    rc, err = _extract(argv)
    assert rc == 0, err
    assert not list(tmp_path.rglob(".*.tmp"))
    resumed = read_log(tmp_path)
    pd.testing.assert_frame_equal(resumed[DETERMINISTIC], uninterrupted[DETERMINISTIC])
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["oracle"]["queries"] == 256 and len(state["rows"]) == len(resumed)


def test_saved_state_grows_linearly_and_is_never_rewritten(victim_path, tmp_path):
    """Each round's queries go to a new file, written once; state.pt itself stays small."""
    run(victim_path, tmp_path, "--budget", "128")
    first = tmp_path / "queries" / "round-000001.pt"
    stamp, size_small = first.stat().st_mtime_ns, (tmp_path / "state.pt").stat().st_size
    run(victim_path, tmp_path, "--budget", "512")
    rounds = sorted((tmp_path / "queries").glob("round-*.pt"))
    assert len(rounds) == 8 and first.stat().st_mtime_ns == stamp  # never rewritten
    assert (tmp_path / "state.pt").stat().st_size < size_small + 8 * 1024  # only the rows grew


def test_round_file_past_the_state_is_dropped(victim_path, tmp_path):
    out, whole = tmp_path / "run", tmp_path / "whole"  # side by side: a run folder holds its own run alone
    run(victim_path, out, "--budget", "128")
    stray = out / "queries" / "round-000003.pt"
    shutil.copy(out / "queries" / "round-000002.pt", stray)  # as if killed before the state committed
    far = out / "queries" / "round-000007.pt"  # a round this resume never writes: only dropping removes it
    shutil.copy(out / "queries" / "round-000002.pt", far)
    run(victim_path, out, "--budget", "192")
    assert not far.exists(), "a round file past the committed state is deleted on resume, not kept"
    run(victim_path, whole, "--budget", "192")
    pd.testing.assert_frame_equal(read_log(out)[DETERMINISTIC], read_log(whole)[DETERMINISTIC])


def test_missing_round_file_is_refused(victim_path, tmp_path):
    run(victim_path, tmp_path, "--budget", "128")
    (tmp_path / "queries" / "round-000001.pt").unlink()
    with pytest.raises(UserError, match="round-000001.pt is missing"):
        run(victim_path, tmp_path, "--budget", "192")


def test_resume_from_another_folder(victim_path, tmp_path, monkeypatch):
    """Paths are stored resolved where the run began: the same files by absolute path resume from anywhere;
    a relative path that now means another folder is refused."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    shutil.copy(victim_path, work / "v.pt")
    monkeypatch.chdir(work)
    run("v.pt", "runs/r1", "--data_dir", "data")
    monkeypatch.chdir(elsewhere)
    assert run(work / "v.pt", work / "runs/r1", "--data_dir", str(work / "data"),
               "--budget", "192")["final"]["queries"] == 192
    assert run(work / "v.pt", work / "runs/r1", "--budget",
               "224")["final"]["queries"] == 224  # mnist-5k reads no data_dir
    shutil.copy(victim_path, elsewhere / "v.pt")  # same content, another file
    with pytest.raises(UserError, match="victim_path"):
        run("v.pt", work / "runs/r1", "--budget", "256")


def test_files_follow_the_umask(victim_path, tmp_path):
    run(victim_path, tmp_path)
    old = os.umask(0o022)
    os.umask(old)
    for name in ("log.csv", "params.json", "state.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~old


#: runs main.py with a Ctrl-C that arrives exactly while torch is being imported (an import hook sends
#: it), whatever the machine's load: a timer in the test could fire only after the imports were done
CTRL_C_DURING_IMPORT = """
import os, runpy, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal: a background job (CI) inherits SIG_IGN
class Hook:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Hook())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_ctrl_c_while_starting_is_clean(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_DURING_IMPORT, str(ROOT / "main.py"), "extract",
                             "--out_dir", str(tmp_path / "o")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and "interrupted" in err
    assert not (tmp_path / "o").exists()


def test_round_files_are_tied_to_the_state(victim_path, tmp_path):
    """A swapped or hand-made round file is refused; a file in queries/ that is not a round is left alone."""
    run(victim_path, tmp_path / "a", "--budget", "128")
    run(victim_path, tmp_path / "b", "--budget", "128", "--mode", "copycat")
    (tmp_path / "a" / "queries" / "round-abc.pt").write_text("not ours")
    shutil.copy(tmp_path / "b" / "queries" / "round-000002.pt", tmp_path / "a" / "queries" / "round-000002.pt")
    with pytest.raises(UserError, match="round-000002.pt is not the file this run saved"):
        run(victim_path, tmp_path / "a", "--budget", "192")
    assert (tmp_path / "a" / "queries" / "round-abc.pt").exists()
