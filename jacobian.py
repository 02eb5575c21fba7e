"""Jacobian-based dataset augmentation (Papernot et al. 2017) as a script: python jacobian.py [extract flags].

Same as 'python main.py extract --mode jacobian ...' (pass --mode jacobiantr for the periodic sign flip);
the attack lives in attacks/jacobian.py.
"""
import sys

from main import attack_script

if __name__ == "__main__":
    sys.exit(attack_script("jacobian"))
