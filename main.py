"""Command-line entry point: python main.py COMMAND [--flags]. Parsing in parameters.py; work in packages."""
from __future__ import annotations

import importlib
import logging
import os
import signal
import sys

#: command -> (module, function). Only the chosen command's module is imported, so a command starts without
#: loading what the others need (the web stack, matplotlib, ...).
COMMANDS = {
    "demo": ("commands.demo", "demo"), "train-victim": ("commands.victim", "train_victim"),
    "extract": ("commands.extract", "extract"), "privacy-cost": ("commands.costs", "privacy_cost"),
    "pow-time": ("commands.powtime", "pow_time"), "cost-separation": ("commands.costs", "cost_separation"),
    "cost-growth": ("commands.costs", "cost_growth"), "pow-mint": ("commands.pow_cmds", "pow_mint"),
    "pow-check": ("commands.pow_cmds", "pow_check"), "pow-calibrate": ("commands.pow_cmds", "pow_calibrate"),
    "pow-table": ("commands.pow_table", "pow_table"), "train-teachers": ("commands.teachers", "train_teachers"),
    "summarize": ("commands.summary", "summarize"), "serve": ("commands.serve", "serve"),
    "serve-admin": ("commands.serve", "serve_admin"), "query": ("commands.serve", "query"),
    "sybil": ("commands.sybil", "sybil"), "frontier": ("commands.frontier", "frontier"),
    "reproduce": ("commands.reproduce", "reproduce"),
}


def command(name: str):
    """The function that runs command `name`."""
    module, function = COMMANDS[name]
    return getattr(importlib.import_module(module), function)


def attack_script(mode: str, argv=None) -> int:
    """The paper's per-attack scripts (jacobian.py, MixMatch-pytorch/train.py, dfme/train.py): extract with
    --mode `mode` unless the flags name another."""
    argv = list(sys.argv[1:] if argv is None else argv)
    named = any(a == "--mode" or a.startswith("--mode=") for a in argv)
    return main(["extract", *([] if named else ["--mode", mode]), *argv])


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        # Ctrl-C is held back while the libraries load: an import cut in half (numpy's) fails with an
        # ImportError instead of a KeyboardInterrupt. A Ctrl-C pressed meanwhile arrives right after.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            import parameters
            from common.errors import UserError
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
    except KeyboardInterrupt:
        print("interrupted while starting; nothing was written", file=sys.stderr)
        return 130

    try:
        settings = parameters.parse(argv)
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
