"""A plain path under a vendor's base URL is written without yarl parsing the URL again:
the request must be byte for byte the one yarl's parse gives, or the fast way must step
aside (escapes yarl decodes, dot segments)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from yarl import URL

from worker.vendors.base import segment
from worker.vendors.transport import Endpoint, HttpClient

BASES = (
    "http://127.0.0.1:8080",
    "https://api.example.com",
    "http://h:1/base",
    "https://h/a%20b/c/",
    "http://[::1]:9/x",
)
PATH_CHARS = st.sampled_from([*"/abcXYZ019-._~!$&'()*+,;=:@%?# \"<>[]^`{|}\\", "%41", "%2f", "%2F", "%7E", "é"])


def yarl_request(base: str, path: str) -> tuple[tuple[str, str, int], bytes]:
    return HttpClient("ua")._request_bytes("GET", URL(base.rstrip("/") + path), {"Accept": "application/json"}, None)


def fast_request(base: str, path: str) -> tuple[tuple[str, str, int], bytes] | None:
    endpoint = Endpoint.of(base.rstrip("/"))
    assert endpoint is not None
    target = endpoint.target(path)
    if target is None:
        return None
    return HttpClient("ua")._request_bytes("GET", target, {"Accept": "application/json"}, None)


@pytest.mark.parametrize("base", BASES)
def test_every_escape_is_written_as_yarl_writes_it_or_left_to_yarl(base: str) -> None:
    differ, fast_ones = [], 0
    for byte in range(256):
        path = f"/jobs/a%{byte:02X}b"
        fast = fast_request(base, path)
        if fast is not None:
            fast_ones += 1
            if fast != yarl_request(base, path):
                differ.append(f"%{byte:02X}")
    assert differ == []
    # All but the 78 yarl decodes: letters, digits, "-._~" and "!$&'()*,;=:@" ("+" it keeps).
    assert fast_ones == 256 - 78


def test_the_escapes_segment_makes_take_the_fast_way() -> None:
    """A job id with reserved characters is escaped by ``segment``; those escapes yarl keeps."""
    path = (
        "/dpss/api/v1/subscriptions/" + segment("7f7f2d8e-6c38", "s") + "/batch-request/" + segment("a/b?c#d e", "id")
    )
    fast = fast_request(BASES[0], path)
    assert fast is not None
    assert fast == yarl_request(BASES[0], path)


@pytest.mark.parametrize(
    "path", ["/a/./b", "/a/../b", "/a/..", "/.", "/a/%41", "/a/%2f", "/a/%7E", "/a b", "/a?x=1", "/é"]
)
def test_paths_yarl_would_change_are_left_to_it(path: str) -> None:
    endpoint = Endpoint.of(BASES[0])
    assert endpoint is not None
    assert endpoint.target(path) is None


@given(base=st.sampled_from(BASES), path=st.lists(PATH_CHARS, max_size=30).map(lambda cs: "/" + "".join(cs)))
@example(base=BASES[2], path="/a/.../b")
@example(base=BASES[0], path="//a//")
def test_any_path_is_sent_as_yarl_sends_it(base: str, path: str) -> None:
    fast = fast_request(base, path)
    if fast is not None:
        assert fast == yarl_request(base, path)


def test_a_base_url_with_a_query_is_not_split() -> None:
    assert Endpoint.of("http://h/x?a=1") is None
    assert Endpoint.of("ftp://h/x") is None
    assert Endpoint.of("http://h:99999") is None
