"""sybil end to end: a real attack's query stream split over keys and batch sizes, in-process and over
HTTP, priced by the server's own service; the table says what the attacker pays over the legitimate."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import run_cli
from tests.server_helpers import BASELINE


@pytest.mark.parametrize("transport", ["in-process", "http"])
def test_sybil_splits_copycat_and_the_split_does_not_bring_it_to_the_legitimate_price(victim_path, tmp_path,
                                                                                     transport):
    baseline = tmp_path / "baseline.csv"
    baseline.write_text(BASELINE)
    out = tmp_path / "sybil.csv"
    args = ["sybil", "--calibration", baseline, "--victim_path", victim_path, "--modes", "copycat", "--budget", "128",
            "--accounts", "1,4", "--batches", "16,32", "--stolen_epochs", "0", "--device", "cpu", "--out", out]
    if transport == "http":
        args += ["--server", "local"]
    r = run_cli(*args, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    table = pd.read_csv(out)
    assert set(table["transport"]) == {transport}
    assert sorted(set(zip(table["keys"], table["batch"]))) == [(1, 16), (1, 32), (4, 16), (4, 32)]
    copycat = table[table["mode"] == "copycat"]
    # photo crops stay dear under every split (the old protocol let 16 keys bring copycat to 2.4x)
    assert (copycat["attacker_over_legit"] > 10).all(), copycat
    assert (table["queries"] == 128).all() and (table["pow_s"] > 0).all()
    assert json.loads((tmp_path / "sybil.params.json").read_text())["command"] == "sybil"
    assert (tmp_path / "sybil.png").stat().st_size > 0
    assert list((tmp_path / "sybil-runs").glob("*.stream.pt"))  # kept: a rerun reuses the streams
