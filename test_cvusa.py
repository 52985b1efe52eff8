"""Test on CVUSA: see `python test_cvusa.py --help` and the README."""
from helper.cli import evaluate_main
from common.errors import run_main

if __name__ == "__main__":
    run_main(lambda: evaluate_main("cvusa"))
