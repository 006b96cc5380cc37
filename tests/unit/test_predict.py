"""The dry-run predictor agrees with the engine on duplicates and replays (no broker:
the predictor runs the worker's own ingest and engine step on a known state)."""

from __future__ import annotations

import asyncio
import datetime as dt

from tests.conftest import itron_connection
from worker.codec import Codec
from worker.engine.model import FileInfo, JobState, Phase, Status
from worker.ops.predict import Predictor
from worker.ops.run import Outcome, OutcomeKind
from worker.testing import itron_request

CODEC = Codec()
NOW = int(dt.datetime.now(dt.UTC).timestamp() * 1000)


def finished(request_id: str, expires_at_ms: int) -> JobState:
    return JobState(
        request_id, "acme", "itron", "itron", "{}", NOW, 0, 1, Phase.DONE, Status.SUCCEEDED, 4, NOW, NOW,
        file=FileInfo("https://blob/x.csv", "csv", expires_at_ms), finished_at_ms=NOW,
    )  # fmt: skip


def predict(request_id: str, *, replay_of: str | None, expires_at_ms: int = NOW + 3_600_000) -> Outcome:
    predictor = Predictor(
        CODEC,
        {request_id: finished(request_id, expires_at_ms)},
        connections={"itron": itron_connection("http://127.0.0.1:1")},
        max_bytes=1 << 20,
        now_ms=NOW,
    )
    record = {**itron_request(request_id), "replay_of": replay_of}
    return asyncio.run(predictor.predict(request_id.encode(), CODEC.encode("ExportRequested", record)))


class TestFinishedRequests:
    def test_an_operators_replay_is_predicted_to_reannounce(self) -> None:
        outcome = predict("p-1", replay_of="p-1")
        assert outcome.kind is OutcomeKind.REANNOUNCE and outcome.text.startswith("re-announce file")

    def test_a_plain_duplicate_is_predicted_to_announce_nothing(self) -> None:
        outcome = predict("p-2", replay_of=None)
        assert outcome.kind is OutcomeKind.SKIP
        assert outcome.text == "skip: already finished (SUCCEEDED, file announced; the link is still valid)"

    def test_a_replay_after_the_link_expired_is_a_skip(self) -> None:
        outcome = predict("p-3", replay_of="p-3", expires_at_ms=NOW - 1)
        assert outcome.kind is OutcomeKind.SKIP and "link expired" in outcome.text
