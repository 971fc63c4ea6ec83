"""`python -m train_host`: the train_host commands of `lineside`."""

import sys

from lineside.cli import main

sys.exit(main(packages=("train_host",), prog="python -m train_host"))
