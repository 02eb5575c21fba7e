"""Data-free model extraction (DFME) as a script: python dfme/train.py [extract flags].

Same as 'python main.py extract --mode dfme ...'; the attack lives in attacks/dfme.py.
"""
import sys

from main import attack_script

if __name__ == "__main__":
    sys.exit(attack_script("dfme"))
