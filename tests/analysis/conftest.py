"""The scripts under ``analysis/`` are not a package: tests load them from their files."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ANALYSIS = Path(__file__).resolve().parents[2] / "analysis"


@pytest.fixture(scope="session")
def analysis_script():
    """``name -> module``: loads ``analysis/<name>.py`` once per session."""
    loaded: dict[str, ModuleType] = {}

    def load(name: str) -> ModuleType:
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(name, ANALYSIS / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]

    return load
