"""The CLI dispatcher: instant help without torch, every subcommand listed, errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hgc_tune.cli import COMMANDS, main


def test_help_does_not_import_torch_or_diffusers():
    code = (
        "import sys, contextlib, io\n"
        "from hgc_tune.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "    for name in " + repr(sorted(COMMANDS)) + ":\n"
        "        try:\n"
        "            main([name, '--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'optuna', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in ("profile", "search", "generate", "evaluate", "report", "macs", "bench", "data"):
        assert name in text


def test_user_error_prints_one_line_and_exits_2():
    out = subprocess.run(
        [sys.executable, "-m", "hgc_tune.cli", "macs", "--model", "sd99"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "model='sd99'" in out.stderr and out.stderr.count("\n") == 1
    debug = subprocess.run(
        [sys.executable, "-m", "hgc_tune.cli", "--debug", "macs", "--model", "sd99"],
        capture_output=True,
        text=True,
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr
