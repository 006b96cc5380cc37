"""Structural promises: a pure engine, an acyclic module graph, and an explicit public surface."""

from __future__ import annotations

import ast
import importlib
import json
from collections.abc import Iterator
from pathlib import Path

import worker
from worker.codec import schemas_dir
from worker.vendor_registry import REGISTRY, VENDORS

PACKAGE = Path(worker.__file__).parent
ENGINE = PACKAGE / "engine"
FORBIDDEN = {"aiohttp", "confluent_kafka", "asyncio", "time", "random", "socket", "fastavro", "worker.vendors"}


class TestEngineIsPure:
    def test_engine_imports_no_io_clock_or_randomness(self) -> None:
        """The engine gets time and jitter as inputs; it never reaches for them."""
        offenders = []
        for path in ENGINE.glob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                for name in names:
                    if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                        offenders.append(f"{path.name}: {name}")
        assert offenders == []

    def test_engine_has_no_vendor_name_branches(self) -> None:
        vendors = ("itron", "opengate", "elasticpath", "unicommerce")
        text = " ".join(p.read_text().lower() for p in ENGINE.glob("*.py"))
        assert [v for v in vendors if f'"{v}"' in text or f"'{v}'" in text] == []


class TestVendorRegistry:
    def test_the_registry_imports_nothing(self) -> None:
        """Config and the operator CLI read it without loading aiohttp or any vendor module."""
        tree = ast.parse((PACKAGE / "vendor_registry.py").read_text())
        imported = {
            alias.name if isinstance(node, ast.Import) else node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        assert imported <= {"__future__", "dataclasses"}

    def test_job_records_are_the_vendor_jobs_of_the_request_schema(self) -> None:
        """Every job in ExportRequested's union but the cancellation belongs to one registered vendor."""
        schema = json.loads((schemas_dir() / "ExportRequested.avsc").read_text())
        union = next(f["type"] for f in schema["fields"] if f["name"] == "job")
        jobs = {t["name"].rsplit(".", 1)[-1] for t in union if isinstance(t, dict)} - {"CancelExport"}
        assert sorted(v.job_record for v in REGISTRY) == sorted(jobs)

    def test_adapters_and_simulators_are_where_the_registry_says(self) -> None:
        for v in REGISTRY:
            assert hasattr(importlib.import_module(v.adapter_module), v.adapter_class), v.name
            assert hasattr(importlib.import_module(v.adapter_module), "validate"), v.name
            assert hasattr(importlib.import_module(v.simulator_module), v.simulator_class), v.name

    def test_no_other_module_lists_the_vendors(self) -> None:
        """A tuple, list, set or dict naming two or more vendors (or their job records) lives
        only in the registry."""
        names = {*VENDORS, *(v.job_record for v in REGISTRY)}
        offenders = []
        for path in PACKAGE.rglob("*.py"):
            if path.name == "vendor_registry.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Tuple | ast.List | ast.Set | ast.Dict):
                    items = node.keys if isinstance(node, ast.Dict) else node.elts
                    named = {n.value for n in items if isinstance(n, ast.Constant) and n.value in names}
                    if len(named) >= 2:
                        offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
        assert offenders == []


class TestPublicSurface:
    def test_all_names_exist(self) -> None:
        for name in worker.__all__:
            assert hasattr(worker, name), name


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(module: str, path: Path, modules: set[str]) -> Iterator[str]:
    """Every module of ``modules`` that ``module`` imports anywhere in its file: at the
    top, under TYPE_CHECKING, or inside a function. ``from a import b`` names a.b when b
    is a submodule, else a; relative names are resolved. Parent packages a name passes
    through are not counted: worker's own __init__ imports the runtime, which would put
    every module on a cycle."""

    def known(name: str) -> str | None:  # the module importing ``name`` loads: its longest known prefix
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [known(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else known(source)
                for alias in node.names
            ]
        else:
            continue
        yield from (t for t in targets if t is not None and t != module)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules it imports, for every module of the package at ``root``."""
    paths = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    return {module: set(_imports(module, path, set(paths))) for module, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


class TestModuleGraph:
    def test_the_import_graph_has_no_cycle(self) -> None:
        """No module under worker/ imports itself through others, not even lazily or for typing."""
        cycle = find_cycle(import_graph())
        assert cycle is None, "import cycle: " + " -> ".join(cycle or [])

    def test_lazy_typing_and_relative_imports_are_edges(self, tmp_path: Path) -> None:
        """A loop closed by a TYPE_CHECKING, a function-level and a relative import is found."""
        pkg = tmp_path / "pkg"
        (pkg / "sub").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "sub" / "__init__.py").write_text("")
        (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import b\n")
        (pkg / "sub" / "b.py").write_text("def f():\n    from . import c\n")
        (pkg / "sub" / "c.py").write_text("from ..a import X\nimport os\n")
        graph = import_graph(pkg)
        assert graph == {"pkg": set(), "pkg.sub": set(), "pkg.a": {"pkg.sub.b"}, "pkg.sub.b": {"pkg.sub.c"},
                         "pkg.sub.c": {"pkg.a"}}  # fmt: skip
        assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg.a"]

    def test_production_code_does_not_import_the_test_helpers(self) -> None:
        """worker.testing is for tests, benchmarks and the chaos run; nothing else in worker/ uses it."""
        graph = import_graph()
        assert sorted(m for m, deps in graph.items() if "worker.testing" in deps and m != "worker.testing") == []
