"""Command-line entry point: python main.py COMMAND [--flags]. Parsing in parameters.py; work in packages."""
from __future__ import annotations

import logging
import signal
import sys


def _commands():
    from commands.costs import cost_growth, cost_separation, privacy_cost
    from commands.demo import demo
    from commands.frontier import frontier
    from commands.pow_cmds import pow_calibrate, pow_check, pow_mint
    from commands.pow_table import pow_table
    from commands.powtime import pow_time
    from commands.reproduce import reproduce
    from commands.serve import query, remote_oracle, serve, serve_admin
    from commands.summary import summarize
    from commands.sybil import sybil
    from commands.teachers import train_teachers
    from commands.victim import train_victim
    from extraction.loop import run_extraction

    def extract(s):
        if s.server:
            oracle, s = remote_oracle(s)
            try:
                result = run_extraction(s, oracle=oracle)
            finally:
                oracle.close()
        else:
            result = run_extraction(s)
        final = result["final"]
        text = (f"{s.mode} on {s.dataset}: {final['queries']} queries, accuracy {final['accuracy']:.2f}%, "
                f"fidelity {final['fidelity']:.2f}%\nlog: {result['log']}\nparams: {result['params']}")
        return result, text

    return {"demo": demo, "train-victim": train_victim, "extract": extract, "privacy-cost": privacy_cost,
            "pow-time": pow_time, "cost-separation": cost_separation, "cost-growth": cost_growth, "pow-mint": pow_mint,
            "pow-check": pow_check, "pow-calibrate": pow_calibrate, "pow-table": pow_table,
            "train-teachers": train_teachers, "summarize": summarize, "serve": serve, "serve-admin": serve_admin,
            "query": query, "sybil": sybil, "frontier": frontier, "reproduce": reproduce}


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
        _, report = _commands()[settings.command](settings)
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
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
