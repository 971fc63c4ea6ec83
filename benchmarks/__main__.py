"""`python -m benchmarks`: the benchmarks commands of `lineside`."""

import sys

from lineside.cli import main

sys.exit(main(packages=("benchmarks",), prog="python -m benchmarks"))
