"""MixMatch as a model-extraction attack, as a script: python MixMatch-pytorch/train.py [extract flags].

Same as 'python main.py extract --mode mixmatch ...'; the attack lives in attacks/mixmatch.py.
"""
import sys

from main import attack_script

if __name__ == "__main__":
    sys.exit(attack_script("mixmatch"))
