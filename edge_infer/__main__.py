"""`python -m edge_infer`: the edge_infer commands of `lineside`."""

import sys

from lineside.cli import main

sys.exit(main(packages=("edge_infer",), prog="python -m edge_infer"))
