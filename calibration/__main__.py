"""`python -m calibration`: the calibration commands of `lineside`."""

import sys

from lineside.cli import main

sys.exit(main(packages=("calibration",), prog="python -m calibration"))
