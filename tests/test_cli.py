"""Every command through the CLI, and each bad input: clear message, non-zero exit, no traceback."""
import contextlib
import io
import json

import pytest

import main

COMMANDS = ["demo", "train-victim", "extract", "privacy-cost", "pow-time", "cost-separation"]


def test_help_lists_commands(cli):
    out = cli("--help")
    assert out.returncode == 0
    for c in COMMANDS:
        assert c in out.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_lists_flags_with_defaults(cli, command):
    out = cli(command, "--help")
    assert out.returncode == 0 and "default" in out.stdout


def assert_clean_error(out, *needles):
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    for n in needles:
        assert n in out.stderr, out.stderr


def test_unknown_flag(cli):
    assert_clean_error(cli("extract", "--no_such_flag", "1"), "unrecognized arguments")


@pytest.mark.parametrize("argv", [("extract", "--no_such_flag"), ("serve-admin", "list-users", "--no_such_flag")])
def test_an_unknown_flag_is_reported_with_its_commands_usage(argv):
    """Not with the top level's usage ('main.py [-h] COMMAND ...'), which names none of the command's flags."""
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(io.StringIO()) as err:
        main.parse(list(argv))
    assert exc.value.code == 2
    assert f"main.py {argv[0]}: error: unrecognized arguments: --no_such_flag" in err.getvalue()
    assert f"usage: main.py {argv[0]}" in err.getvalue()


def test_unknown_dataset(cli):
    assert_clean_error(cli("extract", "--dataset", "imagenet"), "invalid choice: 'imagenet'", "mnist-5k")


def test_unknown_mode(cli, victim_path, tmp_path):
    assert_clean_error(cli("extract", "--mode", "steal", "--victim_path", victim_path, "--out_dir", tmp_path),
                       "unknown mode 'steal'", "copycat", "standard")


def test_budget_below_one_batch(cli, victim_path, tmp_path):
    out = cli("extract", "--budget", "10", "--victim_path", victim_path, "--out_dir", tmp_path / "o")
    assert_clean_error(out, "below one batch")
    assert not (tmp_path / "o").exists()


def test_missing_checkpoint_names_the_command(cli, tmp_path):
    out = cli("extract", "--victim_path", tmp_path / "none.pt", "--out_dir", tmp_path / "o")
    assert_clean_error(out, "does not exist", "python main.py train-victim --dataset mnist-5k")


def test_mismatched_checkpoint(cli, victim_path, tmp_path):
    out = cli("extract", "--dataset", "fashion-mnist", "--victim_path", victim_path, "--out_dir", tmp_path / "o")
    assert_clean_error(out, "trained on 'mnist-5k', not 'fashion-mnist'", "train-victim --dataset fashion-mnist")
    out = cli("extract", "--victim_arch", "resnet18", "--victim_path", victim_path, "--out_dir", tmp_path / "o")
    assert_clean_error(out, "holds architecture 'mnistnet', not 'resnet18'")


def test_corrupt_checkpoint(cli, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert_clean_error(cli("extract", "--victim_path", bad, "--out_dir", tmp_path / "o"), "corrupt")


def test_offline_download(cli, tmp_path):
    out = cli("extract", "--dataset", "mnist", "--data_dir", tmp_path / "empty", "--out_dir", tmp_path / "o")
    assert_clean_error(out, "--data_dir", "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def test_privacy_cost_command(cli, tmp_path):
    votes = tmp_path / "votes.csv"
    votes.write_text("c0,c1,c2,c3,c4,c5,c6,c7,c8,c9\n300,0,0,0,0,0,0,0,0,0\n30,30,30,30,30,30,30,30,30,30\n")
    out = cli("privacy-cost", "--votes", votes, "--sigma", "28", "--delta", "1e-5", "--out", tmp_path / "o.csv")
    assert out.returncode == 0, out.stderr
    assert "0.160962" in out.stdout and "0.243638" in out.stdout and "0.404600" in out.stdout
    assert (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("content,needle", [("1,2,x\n", "non-numeric"), ("", "not a readable CSV"),
                                            ("5\n6\n", "at least two classes"), ("1,-2\n", "non-negative")])
def test_malformed_votes(cli, tmp_path, content, needle):
    votes = tmp_path / "votes.csv"
    votes.write_text(content)
    assert_clean_error(cli("privacy-cost", "--votes", votes), needle)


def test_pow_time_rejects_bad_log(cli, tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    assert_clean_error(cli("pow-time", "--calibration", bad, "--log", bad), "expected a run log")


def test_train_victim_writes_sidecar(victim_path):
    meta = json.loads((victim_path.parent / (victim_path.name + ".json")).read_text())
    assert set(meta) >= {"dataset", "architecture", "test_accuracy", "epochs", "seed"}
    assert meta["dataset"] == "mnist-5k" and meta["test_accuracy"] > 80


def test_cost_separation_command(cli, victim_path, tmp_path):
    import shutil

    import pandas as pd
    shutil.copy(victim_path, tmp_path / "mnist-5k-victim.pt")
    out = cli("cost-separation", "--datasets", "mnist-5k", "--victim_dir", tmp_path, "--queries", "300",
              "--out", tmp_path / "sep.csv")
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(tmp_path / "sep.csv").set_index("measure")
    assert set(table.index) == {"knn sigma=28", "knn sigma=10", "entropy", "gap"}
    # private kNN at sigma=28 is bounded to [0.161, 0.244] per query
    assert 0.16 <= table.loc["knn sigma=28", "in_distribution"] <= 0.2437
    assert table.loc["entropy", "ratio"] > table.loc["knn sigma=28", "ratio"]
    assert (tmp_path / "sep.params.json").exists() and not (tmp_path / "params.json").exists()
    missing = cli("cost-separation", "--datasets", "mnist-5k", "--victim_dir", tmp_path / "none")
    assert missing.returncode != 0 and "train-victim" in missing.stderr


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    """`main.py ... | head -1`: the pipe's reader is gone before the report is printed; the command's
    work is done, so it exits 0 without a BrokenPipeError traceback."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "serve-admin", "list-users", "--state",
                             f"sqlite:///{tmp_path / 's.db'}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # long before the command has started, let alone printed
    err = proc.stderr.read().decode()
    assert proc.wait(120) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err

