"""The layers by their imports (read from the source, AST): the core `miadmark` imports no adapter, and no
adapter imports another; `dicomnet` is the layer the adapters share (it imports the core, never an
adapter). Imports inside functions count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = "miadmark"
SHARED = "dicomnet"
ADAPTERS = ("dicom_node", "orthanc_plugin", "cohort_release")
PACKAGES = (CORE, SHARED, *ADAPTERS)


def imported_packages(path: Path, package: str) -> set[str]:
    """The top-level packages a module imports (relative imports resolve to its own package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add(package if node.level else (node.module or "").split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            found.add(str(node.args[0].value).split(".")[0])  # import_module("dicom_node...") is an import too
    return found & set(PACKAGES)


def violations() -> list[str]:
    out = []
    for package in PACKAGES:
        allowed = {package, CORE} | ({SHARED} if package in ADAPTERS else set())
        for path in sorted((ROOT / package).rglob("*.py")):
            for other in sorted(imported_packages(path, package) - allowed):
                out.append(f"{path.relative_to(ROOT)} imports {other}")
    return out


def test_the_core_imports_no_adapter_and_no_adapter_another():
    assert violations() == []


def test_the_walk_sees_every_kind_of_import(tmp_path):
    """The checker itself: top-level, lazy, relative and import_module imports are all found."""
    module = tmp_path / "m.py"
    module.write_text("import dicom_node.gateway\n"
                      "def f():\n    from orthanc_plugin import outbox\n    from . import sibling\n"
                      "    import importlib\n    importlib.import_module('cohort_release.sink')\n")
    assert imported_packages(module, "miadmark") == {"dicom_node", "orthanc_plugin", "cohort_release", "miadmark"}


def test_the_shared_queue_is_used_through_its_methods_only():
    """No module but dicomnet/queue.py reaches for the queue's connection (Queue._con): the gateway and the
    plugin use its public methods."""
    reaching = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "dicomnet" / "queue.py":
                continue
            tree = ast.parse(path.read_text(), filename=str(path))
            if any(isinstance(n, ast.Attribute) and n.attr == "_con" for n in ast.walk(tree)):
                reaching.append(str(path.relative_to(ROOT)))
    assert reaching == []
