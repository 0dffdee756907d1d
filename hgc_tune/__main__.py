"""``python -m hgc_tune`` runs the ``hgc-tune`` command line."""

from __future__ import annotations

import sys

from hgc_tune.cli import main

sys.exit(main())
