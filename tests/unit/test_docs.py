"""The README's configuration reference names every setting the worker reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel

from worker.config import Settings

README = (Path(__file__).parents[2] / "README.md").read_text()


def env_names() -> list[str]:
    names = []
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for sub in annotation.model_fields:
                names.append(f"EXPORT_WORKER_{name.upper()}__{sub.upper()}")
        else:
            names.append(f"EXPORT_WORKER_{name.upper()}")
    return names


class TestConfigurationReference:
    def test_every_setting_is_documented(self) -> None:
        topic_names = {"STATUS", "FILES", "JOBS", "DLQ", "CONTROL"}
        missing = [
            n
            for n in env_names()
            if n not in README and not (n.startswith("EXPORT_WORKER_TOPICS__") and n.rsplit("__", 1)[1] in topic_names)
        ]
        assert missing == []

    def test_readme_starts_with_the_two_setup_commands(self) -> None:
        first_block = README.split("```", 2)[1].strip().splitlines()
        assert first_block == ["make demo", "make test"]


def readme_defaults() -> dict[str, str]:
    """Environment name -> the default the README's configuration table gives (backticked)."""
    out = {}
    for line in README.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[1].startswith("`") and cells[1].endswith("`"):
            for name in re.findall(r"`(EXPORT_WORKER_[A-Z_]+)`", cells[0]):
                out[name] = cells[1].strip("`")
    return out


def shown(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


class TestDefaults:
    def test_the_readme_gives_the_defaults_the_code_has(self) -> None:
        documented = readme_defaults()
        actual: dict[str, str] = {}
        for name, field in Settings.model_fields.items():
            if isinstance(field.default, BaseModel):
                for sub in type(field.default).model_fields:
                    actual[f"EXPORT_WORKER_{name.upper()}__{sub.upper()}"] = shown(getattr(field.default, sub))
            elif field.default is not None and field.default_factory is None:
                actual[f"EXPORT_WORKER_{name.upper()}"] = shown(field.default)
        differ = {n: (documented[n], actual[n]) for n in documented if n in actual and documented[n] != actual[n]}
        assert differ == {}
        assert len(documented.keys() & actual.keys()) >= 20  # the table was read
