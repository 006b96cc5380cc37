"""The project's logging pipeline writing JSON lines into a buffer, for tests that read
what a line says; the previous configuration comes back afterwards."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterator

import pytest
import structlog

from worker.observability import configure_logging


@contextlib.contextmanager
def json_lines(monkeypatch: pytest.MonkeyPatch, level: str = "info") -> Iterator[io.StringIO]:
    """stderr is a buffer of the test's own rather than ``capsys``'s, which is closed
    before fixtures (a running worker among them) are torn down."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    configure_logging(level, "json")
    try:
        yield buffer
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(root_level)
