"""`python -m model.hf export|import ...` (see model/hf/convert.py)."""
import sys

from model.hf.convert import main

sys.exit(main())
