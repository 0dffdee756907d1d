"""The import structure: the library never imports the trainer (``training``, beside the package), and no
two subpackages import each other, directly or through others. Imports inside functions count too: a lazy
import hides a cycle from Python, not from the design."""

from __future__ import annotations

import ast
from pathlib import Path

import hgc_tune

PACKAGE = Path(hgc_tune.__file__).resolve().parent
TRAINER = "training"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(path: Path, top: str = "hgc_tune") -> set[str]:
    """Every ``hgc_tune…`` (or other ``top``) module ``path`` imports, at any depth of its code."""
    return _imports_in(path.read_text(), _module_name(path), is_package=path.name == "__init__.py", top=top)


def _imports_in(source: str, module: str, is_package: bool = False, top: str = "hgc_tune") -> set[str]:
    here = module.split(".")
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_package else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                found.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                found.add(node.module)
    return {name for name in found if name == top or name.startswith(f"{top}.")}


def _unit(module: str) -> str:
    """The subpackage (or top-level module) a module belongs to; ``hgc_tune`` for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "hgc_tune"


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _unit(_module_name(path))
        targets = {_unit(name) for name in _imported(path)} - {source}
        graph.setdefault(source, set()).update(targets)
    return graph


def test_the_library_does_not_import_the_trainer():
    back_arrows = sorted(
        f"{_module_name(path)} imports {name}"
        for path in PACKAGE.rglob("*.py")
        for name in _imported(path, TRAINER)
    )
    assert back_arrows == []
    assert not (PACKAGE / "zoo").exists()  # the trainer's former place inside the package


def test_subpackages_import_each_other_without_a_cycle():
    graph = _graph()
    # `hgc_tune/__init__.py` re-exports lazily (by name, through importlib) and imports nothing statically, so
    # a module reading `hgc_tune.__version__` adds no edge back; it must stay that way.
    assert graph.get("hgc_tune", set()) == set()
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in done:
            return
        assert node not in visiting, "import cycle: " + " -> ".join([*visiting[visiting.index(node) :], node])
        visiting.append(node)
        for target in sorted(graph.get(node, ())):
            visit(target)
        visiting.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)


def test_the_checks_see_lazy_and_relative_imports():
    source = "def f():\n    from hgc_tune.data import shapes\n    from ..data import _shapes\n"
    assert _imports_in(source, "hgc_tune.models._loading") == {"hgc_tune.data"}
    assert _imports_in("def f():\n    import training.shapes.run\n", "hgc_tune.x", top=TRAINER) == {
        "training.shapes.run"
    }
    assert _imports_in("from . import _shapes", "hgc_tune.models", is_package=True) == {"hgc_tune.models"}
