"""The import layering holds: no import cycles among distill_export's modules (function-level
imports count), and the import-linter contracts in pyproject.toml are kept."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def import_cycles(package: str = "distill_export") -> list[list[str]]:
    """Strongly connected components (more than one module) of the package's import graph, as
    grimp sees it: every import, at module level or inside a function. Empty when acyclic."""
    grimp = pytest.importorskip("grimp", reason="grimp (installed with import-linter) is not installed")
    graph = grimp.build_graph(package)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(root: str) -> None:  # Tarjan's algorithm, iterative (no recursion limit)
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return cycles


def test_no_import_cycles():
    cycles = import_cycles()
    assert cycles == [], "import cycles (each a set of modules that import each other):\n" + "\n".join(
        "  " + " <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    """The check above can fail: a two-module circle made on disk is found."""
    pkg = tmp_path / "circle_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from circle_pkg import b  # a function-level import counts\n")
    (pkg / "b.py").write_text("from circle_pkg import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles("circle_pkg") == [["circle_pkg.a", "circle_pkg.b"]]


def test_import_linter_contracts_are_kept():
    pytest.importorskip("importlinter", reason="import-linter is not installed (pip install -e '.[test]')")
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.skip("the lint-imports command is not on PATH")
    done = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


MAX_MODULE_LINES = 400  # issue 20: short files; split a module along its seams before it grows past this


def test_no_module_is_over_400_lines():
    package = REPO / "distill_export"
    long = {str(p.relative_to(REPO)): n for p in package.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_module_outside_tasks_classification_knows_about_classes():
    """The task seam: argmax, top-1 and class names live in the tasks that predict classes,
    tasks/classification/ and tasks/detection/ (the record's typed fields, the nets' factory
    keyword num_classes and terms that are logit losses aside)."""
    import re

    allowed = ("tasks/classification/", "tasks/detection/", "methods/", "nets/", "record/", "rounds.py")
    pattern = re.compile(r"argmax|top1|\.class_names\b|\.num_classes\b")
    found = []
    for path in (REPO / "distill_export").rglob("*.py"):
        rel = str(path.relative_to(REPO / "distill_export"))
        if rel.startswith(allowed):
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#")[0]
            if pattern.search(code) and not code.strip().startswith(('"', "'")):
                found.append(f"{rel}:{i}: {line.strip()}")
    assert found == [], "\n".join(found)


def test_every_package_folder_is_listed_for_the_wheel():
    """pyproject lists the packages by hand: a new folder left out installs without it, and only a
    non-editable install shows it (the pipeline/ package broke `validate` there, 2026-12-06)."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(root).parts) for p in (root / "distill_export").rglob("__init__.py")}
    assert folders - listed == set(), f"add to [tool.setuptools] packages: {sorted(folders - listed)}"
