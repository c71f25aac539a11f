"""``python -m kit.cli ...``: the ``kit`` command (under ``torchrun -m kit.cli`` too)."""

import sys

from kit.cli import main

sys.exit(main())
