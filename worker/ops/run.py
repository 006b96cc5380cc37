"""What an operator run produces and how it is shown: the outcome of one record, the
report of a whole run, and the progress hooks between a run and whatever draws it.

Shared by ``replay``, ``dlq replay``, the predictor and the renderer; it imports none of
them, so they can all import it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from worker.redaction import redact_text

# ---- the outcome of one record ------------------------------------------------------------


class OutcomeKind(StrEnum):
    """What the worker does with a replayed request (the summary groups by these)."""

    SKIP = "skip"  # already finished: the producer gets DUPLICATE with the reason
    REANNOUNCE = "re-announce"  # finished with a valid link: FileReady again, no vendor call
    DUPLICATE = "duplicate"  # still open: DUPLICATE, no new vendor job
    RESUBMIT = "resubmit"  # no state, or it was rejected: a new vendor job
    CANCEL = "cancel"  # a CancelExport that would act
    FAIL = "would fail"  # refused by ingest or the engine (dead letter / REJECTED)


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: OutcomeKind
    text: str
    request_id: str | None = None


def fail(reason_code: str, reason: str, request_id: str | None = None) -> Outcome:
    return Outcome(OutcomeKind.FAIL, f"would fail: {reason_code}: {redact_text(reason)}", request_id)


# ---- what a run reports to its caller ------------------------------------------------------


@dataclass
class RunReport:
    """What a replay run did (or, with --dry-run, what the worker would do)."""

    command: str
    topic: str
    dry_run: bool
    tag: str | None = None
    checkpoint: Path | None = None
    resumed: bool = False
    already_complete: bool = False
    total: int = 0  # offsets in the ranges still to read at the start of this run
    read: int = 0
    matched: int = 0
    replayed: int = 0
    not_replayable: int = 0
    interrupted: bool = False
    complete: bool = False
    unchecked: bool = False  # dry run without the connections file
    outcomes: Counter[str] = field(default_factory=Counter)
    predictions: list[tuple[str, Outcome]] = field(default_factory=list)
    last: dict[int, int] = field(default_factory=dict)  # partition -> last offset handled

    def as_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "topic": self.topic,
            "dry_run": self.dry_run,
            "tag": self.tag,
            "resumed": self.resumed,
            "read": self.read,
            "matched": self.matched,
            "replayed": self.replayed,
            "not_replayable": self.not_replayable,
            "interrupted": self.interrupted,
            "complete": self.complete,
            "outcomes": dict(self.outcomes),
            "last_offsets": {str(p): o for p, o in sorted(self.last.items())},
        }


# ---- progress: the seam between long operations and whatever shows them --------------------


class Hooks(Protocol):
    """Progress of a run: the CLI draws bars; tests may raise KeyboardInterrupt here to
    interrupt a run at an exact record."""

    def phase(self, description: str, total: int | None) -> None: ...

    def advance(self, records: int) -> None: ...

    def outcome(self, where: str, outcome: Outcome) -> None: ...

    def interrupted(self, report: RunReport) -> None: ...

    def done(self) -> None: ...


class NoHooks:
    """Shows nothing."""

    def phase(self, description: str, total: int | None) -> None:
        pass

    def advance(self, records: int) -> None:
        pass

    def outcome(self, where: str, outcome: Outcome) -> None:
        pass

    def interrupted(self, report: RunReport) -> None:
        pass

    def done(self) -> None:
        pass
