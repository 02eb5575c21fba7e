"""Shared fixtures: a quickly trained mnist-5k victim, a CLI runner (pyproject.toml puts the repository on
sys.path)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import parameters
from commands.victim import train_victim

ROOT = Path(__file__).resolve().parent.parent

#: extract flags that keep registry-wide runs small: dfme's iteration is 7 batches, so it runs at batches
#: of 16 (an iteration of 112 queries); mixmatch's epoch is a pass over the whole unlabelled pool, so it
#: trains 1 of them a round, whatever the test's --stolen_epochs (the flags come last and win)
SMALL_STEPS = {"dfme": ["--query_batch", "16", "--dfme_nz", "16"], "mixmatch": ["--stolen_epochs", "1"],
               "worstcaseood": ["--worstcaseood_candidates", "512"]}


@pytest.fixture(scope="session")
def victim_path(tmp_path_factory) -> Path:
    """A real mnist-5k victim, trained for 3 epochs (about 97% test accuracy is not needed here)."""
    path = tmp_path_factory.mktemp("victim") / "mnist-5k-victim.pt"
    train_victim(parameters.parse(["train-victim", "--victim_path", str(path), "--epochs", "3",
                                   "--device", "cpu"]), progress=False)
    return path


def run_cli(*args, cwd=ROOT, timeout=600, env_key=None):
    """Run main.py in a subprocess; returns CompletedProcess with text output. `env_key` sets
    $POW_API_KEY."""
    env = {**os.environ, "POW_API_KEY": env_key} if env_key else None
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def cli():
    return run_cli


#: modules whose tests run whole extractions, grids, frontiers, servers or CLI processes
SLOW_MODULES = {"test_attacks", "test_bad_inputs", "test_frontier", "test_loop", "test_reproduce", "test_runs",
                "test_server_live", "test_sybil", "test_teachers"}
#: fixtures that make a test slow wherever it is: the grid's victims, `python main.py` in a child process
SLOW_FIXTURES = {"victims", "cli"}


def pytest_addoption(parser):
    parser.addoption("--timed", choices=("all", "skip", "only"), default="all",
                     help="tests marked timed (they measure wall time on every core): run them with the rest (all), "
                          "leave them out (skip), or run only them (only); scripts/test.sh runs them alone, last")


def pytest_collection_modifyitems(config, items):
    """Mark as slow (pyproject.toml's `slow` marker) every test of SLOW_MODULES and every test that asks for
    a SLOW_FIXTURES fixture: `bash scripts/test.sh -m "not slow"` runs the rest in under 3 minutes. Then
    keep or leave out the `timed` tests as --timed says."""
    for item in items:
        if item.module.__name__.rpartition(".")[2] in SLOW_MODULES or SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
    timed = config.getoption("--timed")
    if timed != "all":
        chosen = [(item.get_closest_marker("timed") is not None) == (timed == "only") for item in items]
        config.hook.pytest_deselected(items=[item for item, keep in zip(items, chosen) if not keep])
        items[:] = [item for item, keep in zip(items, chosen) if keep]
