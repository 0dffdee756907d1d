"""The figures' data functions run without matplotlib."""

from __future__ import annotations

import subprocess
import sys


def test_the_data_modules_do_not_import_matplotlib():
    modules = ["_heatmaps", "_policy_grid", "_residuals", "_samples", "_step_macs", "_tradeoff"]
    code = (
        "import sys\n"
        + "".join(f"import hgc_tune.report._figure_info.{m}\n" for m in modules)
        + "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'seaborn')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
