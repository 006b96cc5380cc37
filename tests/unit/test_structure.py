"""Structural promises: a pure engine, and an explicit public surface."""

from __future__ import annotations

import ast
from pathlib import Path

import worker

ENGINE = Path(worker.__file__).parent / "engine"
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


class TestPublicSurface:
    def test_all_names_exist(self) -> None:
        for name in worker.__all__:
            assert hasattr(worker, name), name
