"""MixMatch as a model-extraction attack, as a script: python MixMatch-pytorch/train.py [extract flags].

Same as 'python main.py extract --mode mixmatch ...'; the attack lives in attacks/mixmatch.py.
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: main.py and the packages


def run(argv: list) -> None:
    """Replace this process with the repository's own CLI, with the repository first on PYTHONPATH (the
    packages of this checkout, whatever else is installed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    code = "import sys, main; sys.exit(main.attack_script('mixmatch'))"
    os.execve(sys.executable, [sys.executable, "-c", code, *argv], env)


if __name__ == "__main__":
    run(sys.argv[1:])
