"""pow-mint, pow-check, pow-calibrate and pow-table through the CLI."""
from pathlib import Path

import pandas as pd
import pytest

from pow import hashcash

PAPER = Path(__file__).resolve().parent / "data" / "paper"  # the paper's CSVs, shipped with the tests


def test_mint_and_check_hashcash(cli):
    out = cli("pow-mint", "--puzzle", "hashcash", "--bits", "12", "--resource", "alice", "--workers", "2")
    assert out.returncode == 0, out.stderr
    stamp = out.stdout.splitlines()[0]
    ok = cli("pow-check", "--stamp", stamp, "--bits", "12", "--resource", "alice")
    assert ok.returncode == 0 and ok.stdout.strip() == "ok"
    bad = cli("pow-check", "--stamp", stamp, "--bits", "12", "--resource", "bob")
    assert bad.returncode != 0 and "wrong resource" in bad.stderr and "Traceback" not in bad.stderr
    easy = cli("pow-check", "--stamp", stamp, "--bits", "20", "--resource", "alice")
    assert easy.returncode != 0 and "too easy" in easy.stderr


@pytest.mark.skipif(hashcash.native_tool() is None, reason="hashcash tool not installed")
def test_mint_native(cli):
    out = cli("pow-mint", "--puzzle", "hashcash", "--solver", "native", "--bits", "16", "--resource", "carol")
    assert out.returncode == 0, out.stderr
    assert hashcash.check(out.stdout.splitlines()[0], bits=16, resource="carol")


@pytest.mark.parametrize("puzzle", ["sha256", "scrypt"])
def test_mint_and_check_target(cli, puzzle):
    work = "2000" if puzzle == "sha256" else "5"
    key = "k" * 32
    out = cli("pow-mint", "--puzzle", puzzle, "--work", work, "--pow_subs", "2", "--key", key, "--resource", "r")
    assert out.returncode == 0, out.stderr
    solution = out.stdout.splitlines()[0]
    check = ("pow-check", "--solution", solution, "--resource", "r", "--puzzle", puzzle)
    assert cli(*check, "--key", key).returncode == 0
    forged = cli(*check, "--key", "o" * 32)
    assert forged.returncode != 0 and "bad signature" in forged.stderr
    greedy = cli(*check, "--key", key, "--min_work", "1e9")
    assert greedy.returncode != 0 and "too easy" in greedy.stderr
    other = "scrypt" if puzzle == "sha256" else "sha256"
    wrong_kind = cli(*check[:-1], other, "--key", key)
    assert wrong_kind.returncode != 0 and "wrong puzzle kind" in wrong_kind.stderr


def test_check_needs_one_input(cli):
    out = cli("pow-check")
    assert out.returncode != 0 and "exactly one of --stamp" in out.stderr
    out = cli("pow-check", "--solution", "nonsense", "--key", "k" * 32)
    assert out.returncode != 0 and "malformed" in out.stderr


def test_calibrate_writes_table_and_plot(cli, tmp_path):
    out = cli("pow-calibrate", "--puzzles", "hashcash,sha256", "--trials", "3", "--max_seconds", "0.02",
              "--workers", "1", "--out", tmp_path / "t.csv")
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(tmp_path / "t.csv")
    assert set(table["puzzle"]) == {"hashcash", "sha256"}
    assert (table["mean_s"] > 0).all() and (table["p90_s"] >= table["median_s"]).all()
    assert (tmp_path / "t.png").exists()


def test_extract_with_measured_table(cli, victim_path, tmp_path):
    cli("pow-calibrate", "--puzzles", "sha256", "--trials", "3", "--max_seconds", "0.02", "--workers", "1",
        "--out", tmp_path / "t.csv")
    base = tmp_path / "std"
    assert cli("extract", "--victim_path", victim_path, "--budget", "128", "--stolen_epochs", "1",
               "--out_dir", base).returncode == 0
    out = cli("extract", "--victim_path", victim_path, "--budget", "128", "--stolen_epochs", "1", "--mode", "copycat",
              "--out_dir", tmp_path / "cc", "--calibration", base / "log.csv", "--puzzle", "sha256",
              "--timing_table", "measured", "--timing_csv", tmp_path / "t.csv")
    assert out.returncode == 0, out.stderr
    assert pd.read_csv(tmp_path / "cc" / "log.csv")["pow_work"].iloc[-1] > 0
    missing = cli("extract", "--victim_path", victim_path, "--budget", "128", "--out_dir", tmp_path / "m",
                  "--calibration", base / "log.csv", "--timing_table", "measured", "--timing_csv", tmp_path / "no.csv")
    assert missing.returncode != 0 and "pow-calibrate" in missing.stderr


def test_pow_table_cli(cli, tmp_path):
    out = cli("pow-table", "--calibration", PAPER / "time_privacy_cost_mnist.csv",
              "--attacks", PAPER / "model_extraction_attack_accuracy_mnist.csv", "--out", tmp_path / "t.csv")
    assert out.returncode == 0, out.stderr
    assert "copycat" in out.stdout and "299.39" in out.stdout
    bad = cli("pow-table", "--calibration", PAPER / "time_privacy_cost_mnist.csv", "--attacks", tmp_path / "x.csv")
    assert bad.returncode != 0 and "does not exist" in bad.stderr
