"""Localise your own panoramas: `python localize.py index --help`, `python localize.py query --help`."""
from common.errors import run_main
from localization.cli import main

if __name__ == "__main__":
    run_main(main)
