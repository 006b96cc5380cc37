"""The progress seam between long operator operations and whatever shows them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from worker.ops.predict import Outcome
    from worker.ops.replay import RunReport


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
