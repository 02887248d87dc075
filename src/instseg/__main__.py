"""``python -m instseg``: the command line (what ``torchrun -m instseg`` starts on every rank)."""

import sys

from instseg.cli import main

sys.exit(main())
