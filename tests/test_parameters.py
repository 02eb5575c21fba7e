"""Defaults live in one place: the typed configs' field defaults are the flags' defaults, the parser's
help texts show them, and a default written twice is refused."""
from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

import parameters
from common.errors import ConfigError
from extraction.config import AttackConfig, ExtractionConfig
from server.service import ServiceConfig

#: (command, flag) whose help names another default than the global one, and why
OWN_DEFAULTS = {
    ("frontier", "budget"): "the frontier's smaller grid (FRONTIER_DEFAULTS)",
    ("reproduce", "budget"): "each cell's own: the paper's budget per dataset and attack",
    ("pow-table", "calibration_mode"): "the paper's table, priced by the paper's calibration",
}


def subparsers() -> dict:
    parser = parameters.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_config_default_is_the_flags_default():
    owned = parameters.config_defaults()
    assert {"dataset", "budget", "puzzle", "pow_subs", "max_batch", "rate", "max_factor", "query_share"} <= set(owned)
    for cls in parameters.CONFIG_DEFAULTS:
        for f in dataclasses.fields(cls):
            if f.name in owned and f.default is not dataclasses.MISSING:
                assert parameters.DEFAULTS[f.name] == f.default, (cls.__name__, f.name)
    s = parameters.parse(["extract"])
    config = ExtractionConfig.of(s.as_dict())
    assert config.attack.budget == AttackConfig().budget == s.budget
    assert config.pow.puzzle == ServiceConfig.puzzle and s.max_batch == ServiceConfig.max_batch


def test_a_default_written_twice_is_refused():
    @dataclasses.dataclass(frozen=True)
    class A:
        budget: int = 1024

    @dataclasses.dataclass(frozen=True)
    class B:
        budget: int = 2048

    assert parameters.config_defaults((A, A)) == {"budget": 1024}, "the same default twice is one default"
    with pytest.raises(ConfigError, match="--budget has two defaults: 1024 .A. and 2048 .B."):
        parameters.config_defaults((A, B))
    assert not set(parameters.config_defaults()) - set(parameters.DEFAULTS)


def test_help_texts_show_each_flags_default():
    owned = parameters.config_defaults()
    checked = 0
    for command, parser in subparsers().items():
        for action in parser._actions:
            shown = re.search(r"\(default: ([^;)]*)", action.help or "")
            if action.dest not in owned or shown is None or (command, action.dest) in OWN_DEFAULTS:
                continue
            value = owned[action.dest]
            if value is None or isinstance(value, bool):
                continue  # described in words ("all cores", "off")
            rendered = f"{value:g}" if isinstance(value, float) else str(value)
            assert shown.group(1).startswith(rendered), (command, action.dest, shown.group(1), value)
            checked += 1
    assert checked > 40


def test_pow_table_says_and_uses_the_papers_calibration():
    assert parameters.parse(["pow-table", "--calibration", "c.csv", "--attacks", "a.csv"]).calibration_mode == "paper"
    assert parameters.parse(["extract"]).calibration_mode == "relative"
    modes = {command: next(a.help for a in parser._actions if a.dest == "calibration_mode")
             for command, parser in subparsers().items() if any(a.dest == "calibration_mode" for a in parser._actions)}
    assert "(default: paper)" in modes.pop("pow-table")
    assert modes and all("(default: relative)" in text for text in modes.values())
