"""Defaults live in one place: the typed configs' field defaults are the flags' defaults, the parser's
help texts show them, and a default written twice is refused."""
from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

import main
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
    parser = main.build_parser()
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
    assert main.parse(["pow-table", "--calibration", "c.csv", "--attacks", "a.csv"]).calibration_mode == "paper"
    assert parameters.parse(["extract"]).calibration_mode == "relative"
    modes = {command: next(a.help for a in parser._actions if a.dest == "calibration_mode")
             for command, parser in subparsers().items() if any(a.dest == "calibration_mode" for a in parser._actions)}
    assert "(default: paper)" in modes.pop("pow-table")
    assert modes and all("(default: relative)" in text for text in modes.values())


def test_each_command_adds_its_own_flags_and_the_parser_is_built_from_them():
    every = subparsers()
    assert list(every) == list(main.COMMANDS), "--help lists main.COMMANDS, in its order"
    for name in main.COMMANDS:  # each command's adder adds that command, and only it
        alone = next(a for a in main.build_parser([name])._actions if isinstance(a, argparse._SubParsersAction))
        assert list(alone.choices) == [name]
        assert {a.dest for a in alone.choices[name]._actions} == {a.dest for a in every[name]._actions}
    assert set(parameters.RECIPES) <= set(main.COMMANDS), "every recipe is a command of main.py"


def test_a_recipes_line_parses_alike_below_the_commands_and_in_main():
    line = ["extract", "--mode", "copycat", "--budget", "64", "--dataset", "fashion-mnist"]
    assert parameters.parse(line).as_dict() == main.parse(line).as_dict()
    line = ["train-victim", "--epochs", "2"]
    assert parameters.parse(line).as_dict() == main.parse(line).as_dict()
    with pytest.raises(ConfigError, match="parse any command's with main.parse"):
        parameters.parse(["serve", "--calibration", "c.csv"])
    with pytest.raises(ConfigError, match="not \\[\\]"):
        parameters.parse([])
