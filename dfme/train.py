"""Data-free model extraction (DFME) as a script: python dfme/train.py [extract flags].

Same as 'python main.py extract --mode dfme ...'; the attack lives in attacks/dfme.py.
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: main.py and the packages


def run(argv: list) -> None:
    """Replace this process with the repository's own CLI, with the repository first on PYTHONPATH (the
    packages of this checkout, whatever else is installed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    code = "import sys, main; sys.exit(main.attack_script('dfme'))"
    os.execve(sys.executable, [sys.executable, "-c", code, *argv], env)


if __name__ == "__main__":
    run(sys.argv[1:])
