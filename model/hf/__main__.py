"""`python -m model.hf export|import ...` (the command line is model/hf/cli.py)."""

import sys

from model.hf.cli import main

sys.exit(main())
