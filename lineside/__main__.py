import sys

from lineside.cli import main

sys.exit(main())
