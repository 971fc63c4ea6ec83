"""`python -m deploy_jetson`: the deploy_jetson commands of `lineside`."""

import sys

from lineside.cli import main

sys.exit(main(packages=("deploy_jetson",), prog="python -m deploy_jetson"))
