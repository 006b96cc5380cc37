"""The README's configuration reference names every setting the worker reads."""

from __future__ import annotations

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
