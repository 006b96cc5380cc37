"""The key layout of a partition store."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.store import keys

IDS = st.text(st.characters(codec="utf-8"), max_size=40)
DUES = st.integers(0, 2**63 - 1)


class TestExpiryKeys:
    @given(DUES, IDS, DUES, IDS)
    def test_keys_sort_by_due_time_then_id(self, due_a: int, id_a: str, due_b: int, id_b: str) -> None:
        """Byte order of x/ keys is (due, id) order, so a range scan is due order."""
        a, b = keys.expiry_key(due_a, id_a.encode()), keys.expiry_key(due_b, id_b.encode())
        assert (a < b) == ((due_a, id_a.encode()) < (due_b, id_b.encode()))

    @given(DUES, IDS)
    def test_a_key_round_trips(self, due: int, request_id: str) -> None:
        """parse_expiry_key undoes expiry_key, for ids with '/' and non-ASCII too."""
        assert keys.parse_expiry_key(keys.expiry_key(due, request_id.encode())) == (due, request_id)

    @given(DUES, IDS, DUES)
    def test_the_bound_includes_exactly_the_keys_due_by_until(self, due: int, request_id: str, until: int) -> None:
        """expiry_bound(until) is above every key due at or before until, below the rest."""
        assert (keys.expiry_key(due, request_id.encode()) < keys.expiry_bound(until)) == (due <= until)

    def test_a_negative_due_time_is_due_at_once(self) -> None:
        """An Avro long may be negative; the index treats it as due at 0."""
        assert keys.parse_expiry_key(keys.expiry_key(-5, b"a")) == (0, "a")


class TestPrefixes:
    def test_prefix_ranges_do_not_overlap(self) -> None:
        """Each prefix's upper bound stops before the next kind of key."""
        for prefix in (keys.JOB, keys.OPEN, keys.EXPIRY):
            end = keys.prefix_end(prefix)
            assert prefix + b"\xff" * 8 < end
            assert all(
                not (prefix <= other < end) for other in (keys.JOB, keys.OPEN, keys.EXPIRY, b"m/") if other != prefix
            )
