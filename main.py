"""Command-line entry point: python main.py COMMAND [--flags]. Each command's module adds its flags (shared
families and defaults in parameters.py); work in packages."""
from __future__ import annotations

import importlib
import logging
import os
import signal
import sys

#: command -> (module, function, adder), in the order --help lists them. The adder is the module's function
#: that adds the command and its flags to the parser. Only the chosen command's module is imported, so a
#: command starts without loading what the others need (the web stack, matplotlib, ...).
COMMANDS = {
    "demo": ("commands.demo", "demo", "add_arguments"),
    "train-victim": ("commands.victim", "train_victim", "add_arguments"),
    "train-teachers": ("commands.teachers", "train_teachers", "add_arguments"),
    "extract": ("commands.extract", "extract", "add_arguments"),
    "serve": ("commands.serve", "serve", "add_serve_arguments"),
    "serve-admin": ("commands.serve", "serve_admin", "add_serve_admin_arguments"),
    "query": ("commands.serve", "query", "add_query_arguments"),
    "sybil": ("commands.sybil", "sybil", "add_arguments"),
    "frontier": ("commands.frontier", "frontier", "add_arguments"),
    "reproduce": ("commands.reproduce", "reproduce", "add_arguments"),
    "summarize": ("commands.summary", "summarize", "add_arguments"),
    "privacy-cost": ("commands.costs", "privacy_cost", "add_privacy_cost_arguments"),
    "pow-time": ("commands.powtime", "pow_time", "add_arguments"),
    "pow-mint": ("commands.pow_cmds", "pow_mint", "add_pow_mint_arguments"),
    "pow-check": ("commands.pow_cmds", "pow_check", "add_pow_check_arguments"),
    "pow-calibrate": ("commands.pow_cmds", "pow_calibrate", "add_pow_calibrate_arguments"),
    "pow-table": ("commands.pow_table", "pow_table", "add_arguments"),
    "cost-separation": ("commands.costs", "cost_separation", "add_cost_separation_arguments"),
    "cost-growth": ("commands.costs", "cost_growth", "add_cost_growth_arguments"),
}


def _part(name: str, index: int):
    module = COMMANDS[name][0]
    return getattr(importlib.import_module(module), COMMANDS[name][index])


def command(name: str):
    """The function that runs command `name`."""
    return _part(name, 1)


def build_parser(names=None):
    """The parser of the commands `names` (default: all), each built by its own module's adder."""
    import parameters

    return parameters.build_parser([_part(name, 2) for name in (COMMANDS if names is None else names)])


def _named(argv: list):
    """The commands whose parsers a command line needs: its own, or all of them for --help, a missing or an
    unknown command (argparse then lists them all)."""
    return argv[:1] if argv and argv[0] in COMMANDS else None


def parse(argv=None):
    """The read-only Settings of a command line; only the named command's module is loaded."""
    import parameters

    argv = list(sys.argv[1:] if argv is None else argv)
    return parameters.resolve(build_parser(_named(argv)).parse_args(argv))


def attack_script(mode: str, argv=None) -> int:
    """The paper's per-attack scripts (jacobian.py, MixMatch-pytorch/train.py, dfme/train.py): extract with
    --mode `mode` unless the flags name another."""
    argv = list(sys.argv[1:] if argv is None else argv)
    named = any(a == "--mode" or a.startswith("--mode=") for a in argv)
    return main(["extract", *([] if named else ["--mode", mode]), *argv])


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        # Ctrl-C is held back while the libraries load: an import cut in half (numpy's) fails with an
        # ImportError instead of a KeyboardInterrupt. A Ctrl-C pressed meanwhile arrives right after.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            from common.errors import UserError
            from common.process import adopt_parent
            for name in _named(argv) or COMMANDS:  # the command's module, and with it torch, numpy, ...
                importlib.import_module(COMMANDS[name][0])
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
    except KeyboardInterrupt:
        print("interrupted while starting; nothing was written", file=sys.stderr)
        return 130

    adopt_parent()  # a grid's run stops when its grid does, even one killed with SIGKILL
    try:
        settings = parse(argv)
        _, report = command(settings.command)(settings)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path that cannot be read or written: say which, and why
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot use{where}: {exc.strerror or exc}; check the path and its permissions",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; completed rounds are saved and the run resumes when started again", file=sys.stderr)
        return 130
    try:
        print(report, flush=True)
    except BrokenPipeError:  # the reader stopped early (`| head -1`): the work is done, the rest is not wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit finds no pipe
    return 0


if __name__ == "__main__":
    sys.exit(main())
