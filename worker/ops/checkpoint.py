"""Checkpoint files that make a replay resumable.

A checkpoint records the command and the arguments it was started with, the offset
ranges those arguments resolved to on the first run (so ``--from -24h`` means the same
records on every resume), the last replayed offset per partition, and the tag of
derived request ids (``--force``). A resumed run continues after the recorded offsets;
a checkpoint made by other arguments is refused.

The file is replaced atomically (write a sibling, then rename), so an interrupted save
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.ops.errors import CheckpointError
from worker.ops.kafkaio import Span
from worker.ops.timeparse import format_ms

VERSION = 1


@dataclass
class Checkpoint:
    path: Path
    command: str
    args: dict[str, Any]
    topic: str
    spans: list[Span]
    done: dict[int, int] = field(default_factory=dict)  # partition -> last replayed offset
    tag: str | None = None
    complete: bool = False
    replayed: int = 0
    saved_at_ms: int = 0

    @classmethod
    def load(cls, path: Path) -> Checkpoint | None:
        """The checkpoint at ``path``; None when there is no file yet."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from None
        try:
            data = json.loads(text)
            if data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {VERSION}")
            return cls(
                path=path,
                command=str(data["command"]),
                args=dict(data["args"]),
                topic=str(data["topic"]),
                spans=[Span(int(p), int(s), int(e)) for p, (s, e) in data["ranges"].items()],
                done={int(p): int(o) for p, o in data.get("done", {}).items()},
                tag=data.get("tag"),
                complete=bool(data.get("complete", False)),
                replayed=int(data.get("replayed", 0)),
                saved_at_ms=int(data.get("saved_at_ms", 0)),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint {path} is not a valid checkpoint file: {exc}") from None

    def check(self, command: str, args: dict[str, Any]) -> None:
        """Refuse to resume a checkpoint made by another command or other arguments."""
        if self.command != command:
            raise CheckpointError(
                f"checkpoint {self.path} belongs to `{self.command}`, not `{command}`; use another --checkpoint file"
            )
        theirs = {k: v for k, v in self.args.items() if v is not None}
        ours = {k: v for k, v in args.items() if v is not None}
        if theirs != ours:
            keys = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            diff = ", ".join(f"{k}: {theirs.get(k)!r} then, {ours.get(k)!r} now" for k in keys)
            raise CheckpointError(
                f"checkpoint {self.path} was made with other arguments ({diff}); "
                "rerun with the same arguments, or use another --checkpoint file"
            )

    def remaining(self) -> list[Span]:
        """The part of each span not replayed yet."""
        out = []
        for span in self.spans:
            last = self.done.get(span.partition)
            start = span.start if last is None else max(span.start, last + 1)
            out.append(Span(span.partition, start, span.end))
        return out

    def save(self, now_ms: int) -> None:
        self.saved_at_ms = now_ms
        data = {
            "version": VERSION,
            "command": self.command,
            "args": self.args,
            "topic": self.topic,
            "ranges": {str(s.partition): [s.start, s.end] for s in self.spans},
            "done": {str(p): o for p, o in sorted(self.done.items())},
            "tag": self.tag,
            "complete": self.complete,
            "replayed": self.replayed,
            "saved_at_ms": now_ms,
            "saved_at": format_ms(now_ms),
        }
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoint {self.path}: {exc.strerror}") from None
