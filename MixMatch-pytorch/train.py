"""MixMatch as a model-extraction attack, as a script: python MixMatch-pytorch/train.py [extract flags].

Same as 'python main.py extract --mode mixmatch ...'; the attack lives in attacks/mixmatch.py.
"""
import os
import sys
from pathlib import Path

MAIN = Path(__file__).resolve().parent.parent / "main.py"  # run as a script, its folder leads sys.path: this checkout

if __name__ == "__main__":  # --mode mixmatch, unless the flags name another (argparse keeps the last)
    os.execv(sys.executable, [sys.executable, str(MAIN), "extract", "--mode", "mixmatch", *sys.argv[1:]])
