"""Train on CVUSA: see `python train_cvusa.py --help` and the README."""
from helper.cli import train_main
from common.errors import run_main

if __name__ == "__main__":
    run_main(lambda: train_main("cvusa"))
