"""The extraction loop as a script: python main_model_extraction.py [extract flags].

Same as 'python main.py extract ...'; the loop itself lives in extraction/loop.py.
"""
import sys

from main import main

if __name__ == "__main__":
    sys.exit(main(["extract", *sys.argv[1:]]))
