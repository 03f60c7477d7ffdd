"""`python -m gradiend`: the command line."""

import sys

from gradiend.cli import main

sys.exit(main())
