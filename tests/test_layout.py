"""The package's shape: the public API, the old import paths, imports that only go down, small files."""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "multi_modal_rag"
# Lower layers first: a module may import from its own layer or a lower one, never from a higher one.
LAYERS = [
    {"errors", "paths", "connection", "results"},
    {"documents", "models", "evaluation", "projection"},
    {"store"},
    {"encoders"},
    {"binding"},
    {"writer", "search"},
    {"manager", "migration", "parallel", "tuning", "training_data"},
    {"serve"},
    {"cli"},
]
SHIMS = {"indexing", "index_body", "queries", "local_node", "__init__", "__main__"}  # may import anything
MAX_LINES = 420


def _top(module_path: Path) -> str:
    return module_path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _internal_imports(path: Path) -> set[str]:
    """The top-level package parts (`store`, `documents`, ...) a module imports from."""
    depth = len(path.relative_to(PACKAGE).parts) - 1  # 0 for multi_modal_rag/x.py, 1 for multi_modal_rag/pkg/x.py
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").startswith("multi_modal_rag."):
                found.add(node.module.split(".")[1])
            elif node.level > depth:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("multi_modal_rag."))
    return found


def _layer(name: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if name in layer), None)


def test_every_module_has_a_layer_and_imports_only_downwards():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        top = _top(path)
        if top in SHIMS or top == "devtools":
            continue
        own = _layer(top)
        assert own is not None, f"{path.relative_to(PACKAGE)} is in no layer: add {top!r} to LAYERS"
        for imported in _internal_imports(path) - {top}:
            if imported == "devtools" and top == "cli":
                continue
            level = _layer(imported)
            if level is None or level > own:
                problems.append(f"{path.relative_to(PACKAGE)} imports {imported}")
    assert not problems, "upward imports: " + "; ".join(problems)


def test_the_library_never_imports_the_developer_tooling():
    for path in PACKAGE.rglob("*.py"):
        if _top(path) not in ("devtools", "cli", "local_node"):
            assert "devtools" not in _internal_imports(path), path


def test_no_file_much_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long


def test_public_api_from_the_package_itself():
    import multi_modal_rag

    for name in ("OpenSearchManager", "Paper", "read_papers", "SearchFilters", "Migrator", "IndexSpec", "MMRagError"):
        assert name in multi_modal_rag.__all__ and getattr(multi_modal_rag, name)


@pytest.mark.parametrize(("old", "name", "new"), [
    ("multi_modal_rag.indexing", "OpenSearchManager", "multi_modal_rag.manager"),
    ("multi_modal_rag.index_body", "build_index_body", "multi_modal_rag.store.template"),
    ("multi_modal_rag.queries", "SearchFilters", "multi_modal_rag.search.queries"),
    ("multi_modal_rag.local_node", "start_node", "multi_modal_rag.devtools.local_node"),
])
def test_old_import_paths_still_work_and_warn(old, name, new):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
    assert any(issubclass(w.category, DeprecationWarning) and "next release" in str(w.message) for w in caught)
