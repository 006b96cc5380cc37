"""The texts the Itron adapter derives: the correlation id it sends with every call and
the expiry it reads from a download link's query."""

from __future__ import annotations

import datetime as dt
import uuid
from urllib.parse import parse_qs

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from worker.vendors.base import JobSpec
from worker.vendors.itron import (
    _CORRELATION_NS,
    _remembered_correlation_id,
    correlation_id,
    link_expiry_ms,
    name_based_uuid,
    query_value,
)

_NAMES = st.sampled_from(["se", "s%65", "se+", "sig", "sv", "", "s e", "SE"])
_VALUES = st.one_of(
    st.sampled_from(["", "2026-12-31T00:00:00Z", "2026-12-31T00%3A00%3A00Z", "a+b", "%zz", "%C3%A9", "=x"]),
    st.text(alphabet="abc%+=;/:ZT0123456789é", max_size=8),
)
_FIELDS = st.one_of(
    st.tuples(_NAMES, st.sampled_from(["=", ""]), _VALUES).map("".join),
    st.text(alphabet="se=&%+", max_size=6),
)
_QUERIES = st.lists(_FIELDS, max_size=6).map("&".join)


class TestQueryValue:
    @settings(max_examples=500)
    @given(_QUERIES)
    @example("se=&se=2026-12-31T00:00:00Z")  # a blank value is skipped, as parse_qs skips it
    @example("s%65=1&se=2")  # a name is compared once decoded
    @example("se")  # no value at all
    def test_reads_the_first_value_as_parse_qs_does(self, query: str) -> None:
        expected = parse_qs(query).get("se", [None])[0]
        assert query_value(query, "se") == expected


class TestLinkExpiry:
    def test_the_signed_links_expiry_in_epoch_milliseconds(self) -> None:
        url = "https://blob.example/f.zip?sv=2021-08-06&st=2026-12-01T00%3A00%3A00Z&se=2026-12-31T12%3A30%3A00Z&sig=abc%3D"
        assert link_expiry_ms(url) == int(dt.datetime(2026, 12, 31, 12, 30, tzinfo=dt.UTC).timestamp() * 1000)

    @pytest.mark.parametrize(
        "url",
        ["https://blob.example/f.zip", "https://blob.example/f.zip?se=", "https://blob.example/f.zip?se=soon"],
    )
    def test_no_usable_expiry_is_none(self, url: str) -> None:
        assert link_expiry_ms(url) is None


class TestCorrelationId:
    def test_derived_from_the_request_id_when_the_request_gives_none(self) -> None:
        spec = JobSpec("t-1", "acme", "itron", {})
        assert correlation_id(spec) == str(uuid.uuid5(_CORRELATION_NS, "t-1"))
        assert correlation_id(spec) == correlation_id(JobSpec("t-1", "acme", "itron", {}))
        assert correlation_id(JobSpec("t-2", "acme", "itron", {})) != correlation_id(spec)

    @settings(max_examples=300)
    @given(st.text(max_size=300))
    @example("")
    @example("t-1")
    def test_the_name_based_uuid_is_uuid5s(self, name: str) -> None:
        try:
            expected = str(uuid.uuid5(_CORRELATION_NS, name))
        except UnicodeEncodeError:  # a lone surrogate: refused alike
            with pytest.raises(UnicodeEncodeError):
                name_based_uuid(name)
            return
        assert name_based_uuid(name) == expected

    def test_a_given_uuid_is_sent_in_its_canonical_form(self) -> None:
        given = "7F7F2D8E6C384B8E9A536A1F1C7B2E10"
        spec = JobSpec("t-1", "acme", "itron", {}, correlation_id=given)
        assert correlation_id(spec) == "7f7f2d8e-6c38-4b8e-9a53-6a1f1c7b2e10"

    def test_a_given_id_that_is_not_a_uuid_falls_back_to_the_request_ids(self) -> None:
        spec = JobSpec("t-1", "acme", "itron", {}, correlation_id="not-a-uuid")
        assert correlation_id(spec) == str(uuid.uuid5(_CORRELATION_NS, "t-1"))

    def test_only_ids_of_a_uuids_length_are_remembered(self) -> None:
        """A request's correlation_id is as long as its producer likes: a long one is
        worked out again on each call rather than kept alive by the cache."""
        long_uuid = "-" * 10_000 + "7f7f2d8e6c384b8e9a536a1f1c7b2e10"  # uuid.UUID drops hyphens
        _remembered_correlation_id.cache_clear()
        spec = JobSpec("t-1", "acme", "itron", {}, correlation_id=long_uuid)
        assert correlation_id(spec) == "7f7f2d8e-6c38-4b8e-9a53-6a1f1c7b2e10"
        assert _remembered_correlation_id.cache_info().currsize == 0
        correlation_id(JobSpec("t-1", "acme", "itron", {}, correlation_id="7f7f2d8e6c384b8e9a536a1f1c7b2e10"))
        assert _remembered_correlation_id.cache_info().currsize == 1
