"""Data-free model extraction (DFME) as a script: python dfme/train.py [extract flags].

Same as 'python main.py extract --mode dfme ...'; the attack lives in attacks/dfme.py.
"""
import os
import sys
from pathlib import Path

MAIN = Path(__file__).resolve().parent.parent / "main.py"  # run as a script, its folder leads sys.path: this checkout

if __name__ == "__main__":  # --mode dfme, unless the flags name another (argparse keeps the last)
    os.execv(sys.executable, [sys.executable, str(MAIN), "extract", "--mode", "dfme", *sys.argv[1:]])
