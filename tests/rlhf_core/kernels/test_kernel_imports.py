"""The kernels package imports one way: public ops -> chunk driver / private Triton backend, never back."""

from __future__ import annotations

import ast
from pathlib import Path

import rlhf_core.kernels

PACKAGE = "rlhf_core.kernels"


def _imports_of(path: Path) -> set[str]:
    """Modules of this package that ``path`` imports (at the top or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE + "."):
            found.add(node.module.removeprefix(PACKAGE + "."))
        elif isinstance(node, ast.Import):
            found |= {
                a.name.removeprefix(PACKAGE + ".") for a in node.names if a.name.startswith(PACKAGE + ".")
            }
    return found


def _graph() -> dict[str, set[str]]:
    folder = Path(rlhf_core.kernels.__file__).parent
    return {p.stem: _imports_of(p) for p in folder.glob("*.py") if p.stem != "__init__"}


def test_no_import_cycle_inside_the_kernels_package():
    graph = _graph()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for target in graph.get(module, ()):
            visit(target, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_private_triton_backend_never_imports_the_dispatcher():
    graph = _graph()
    assert "_triton_row_softmax" in graph["dispatch"]  # the dispatcher is the one that imports the backend
    for private in ("_triton_row_softmax", "_triton_kernels", "chunked", "row_softmax"):
        assert "dispatch" not in graph[private], f"{private} imports the dispatcher"
