"""The top-level public API: every name in ``hgc_tune.__all__`` resolves, lazily."""

from __future__ import annotations

import subprocess
import sys

import hgc_tune


def test_every_public_name_resolves():
    missing = [name for name in hgc_tune.__all__ if getattr(hgc_tune, name, None) is None]
    assert missing == []


def test_importing_the_package_does_not_import_torch():
    code = "import sys, hgc_tune; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
