"""What the control topic's latest values say: pauses and fleet-wide connection blocks
(the values are JSON anyone with write access could have written: unusable ones count as
absent)."""

from __future__ import annotations

import json

from worker.control import ControlState, block_key, block_value, control_key


def values(*records: tuple[bytes, bytes]) -> dict[str, dict[str, object]]:
    return {key.decode(): json.loads(value) for key, value in records}


class TestControlState:
    def test_pauses_and_blocks_are_read_apart(self) -> None:
        state = ControlState.of(
            values(
                (control_key("itron-prod", vendor=False), b'{"paused": true}'),
                (control_key("opengate", vendor=True), b'{"paused": false}'),
                (block_key("itron-prod"), block_value(1_700_000_000_000, "rate_limited", "w-1")),
            )
        )
        assert state.paused == frozenset({"connection:itron-prod"})
        assert state.blocks == {"itron-prod": 1_700_000_000_000}
        assert state.is_paused("itron-prod", "itron") and not state.is_paused("og", "opengate")

    def test_a_block_without_a_whole_number_until_is_no_block(self) -> None:
        state = ControlState.of(
            {
                "block:a": {"until": "tomorrow"},
                "block:b": {"until": True},
                "block:c": {"until": 1.5e12},
                "block:d": {},
                "block:e": {"until": 5, "paused": True},
            }
        )
        assert state.blocks == {"e": 5} and state.paused == frozenset()

    def test_a_block_value_says_until_why_and_who(self) -> None:
        value = json.loads(block_value(42, "rate_limited: wait 5 s", "w-9"))
        assert (value["until"], value["reason"], value["by"]) == (42, "rate_limited: wait 5 s", "w-9")
        assert isinstance(value["at"], int)
