"""Every docstring example in the package and in the trainer (``training/``) runs, so none can rot.

Examples that need downloads, trained task models, a profiled run folder or minutes of compute are marked
``# doctest: +SKIP`` where they stand; everything else runs here, from the repository root (examples name
shipped files such as ``policies/…``), with the session's isolated cache (``tests/conftest.py``).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest
import torch

import hgc_tune
import training

REPOSITORY = Path(hgc_tune.__file__).resolve().parents[1]
MODULES = sorted(
    info.name
    for package in (hgc_tune, training)
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")
    # `python -m` entry points run the command line when imported.
    if not info.name.endswith(".__main__")
)


def test_every_module_is_searched():
    assert {"hgc_tune.executor._apply", "hgc_tune.macs._table", "training.shapes.stages"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, monkeypatch, capsys):
    monkeypatch.chdir(REPOSITORY)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module = importlib.import_module(name)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        for test in doctest.DocTestFinder(exclude_empty=True).find(module, name):
            runner.run(test)
    finally:
        torch.set_num_threads(threads)
    report = capsys.readouterr().out
    assert runner.failures == 0, report
