"""Redaction: what is masked in text, mappings and excerpts, and what is left alone."""

from __future__ import annotations

import re
import sys

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from worker.observability import redact_processor
from worker.redaction import MASK, excerpt, redact, redact_text, substitute_patterns

# Texts built like what the patterns look for (a key, a separator, a value), mixed with
# arbitrary text, so generated texts often hold a secret, or nearly one.
_SECRET_LIKE = st.tuples(
    st.text(max_size=4),
    st.sampled_from(['"password"', "'token'", '\\"secret\\"', "sig", "X-ApiKey", "Bearer", "bAsIc"]),
    st.sampled_from(["=", ":", ": ", " "]),
    st.sampled_from(['"v1"', "'v2'", '\\"v3\\"', "abcdefgh"]),
    st.text(max_size=4),
).map("".join)
_TEXTS = st.lists(st.one_of(_SECRET_LIKE, st.text(max_size=12)), max_size=6).map("".join)


class TestHeaders:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (
                "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
                "Authorization: Bearer ***",
            ),
            ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "Authorization: Basic ***"),
            ("authorization: bearer abc123def456", "authorization: bearer ***"),
            ("X-ApiKey: 0a1b2c3d-key", "X-ApiKey: ***"),
            (
                "{'X-ApiKey': 'k-123', 'Accept': 'application/json'}",
                "{'X-ApiKey': '***', 'Accept': 'application/json'}",
            ),
            ('headers={"x-apikey": "k-456"}', 'headers={"x-apikey": "***"}'),
        ],
        ids=["bearer", "basic", "lower-case-scheme", "x-apikey-header", "x-apikey-repr", "x-apikey-json"],
    )
    def test_credentials_in_headers_are_masked(self, text: str, expected: str) -> None:
        assert redact_text(text) == expected

    @pytest.mark.parametrize("text", ["the bearer token expired", "Bearer abc", "Basic auth refused"])
    def test_words_after_a_scheme_that_cannot_be_a_credential_stay(self, text: str) -> None:
        """A credential is at least six token characters; prose stays readable."""
        assert redact_text(text) == text


class TestQueryStrings:
    def test_the_signature_of_a_signed_link_is_masked_and_the_rest_kept(self) -> None:
        link = (
            "https://acct.blob.core.windows.net/raw/A/A.zip?sv=2018-03-28&sr=b&sig=Zm9v%2Bbar%3D"
            "&st=2024-06-13T10:00:00Z&se=2024-07-13T10:00:00Z&sp=r"
        )
        assert redact_text(link) == (
            "https://acct.blob.core.windows.net/raw/A/A.zip?sv=2018-03-28&sr=b&sig=***"
            "&st=2024-06-13T10:00:00Z&se=2024-07-13T10:00:00Z&sp=r"
        )

    def test_a_form_body_keeps_everything_but_the_secret(self) -> None:
        form = "grant_type=client_credentials&client_id=demo-client&client_secret=s3cr3t&scope=DPSSSubscriberApi"
        assert redact_text(form) == (
            "grant_type=client_credentials&client_id=demo-client&client_secret=***&scope=DPSSSubscriberApi"
        )

    def test_every_token_parameter_is_masked(self) -> None:
        url = "https://x.example/cb?access_token=abc.def&refresh_token=r1&id_token=i1&token=t1&state=ok"
        assert (
            redact_text(url)
            == "https://x.example/cb?access_token=***&refresh_token=***&id_token=***&token=***&state=ok"
        )

    def test_keys_passwords_and_signatures_are_masked(self) -> None:
        assert redact_text("?apiKey=k1&api_key=k2&password=hunter2&signature=s1") == (
            "?apiKey=***&api_key=***&password=***&signature=***"
        )

    def test_parameters_that_are_not_secret_stay(self) -> None:
        assert redact_text("status=Failed&message=nothing+secret") == "status=Failed&message=nothing+secret"


class TestJsonFields:
    def test_token_answer(self) -> None:
        body = '{"access_token": "eyJ.abc", "expires_in": 3600, "token_type": "Bearer", "refresh_token":"r-1"}'
        assert redact_text(body) == (
            '{"access_token": "***", "expires_in": 3600, "token_type": "Bearer", "refresh_token":"***"}'
        )

    def test_escaped_quotes_inside_a_value_are_masked_with_it(self) -> None:
        body = '{"user": "u", "password": "pa\\"ss", "Authorization": "SharedKey acct:abc", "sig": "s"}'
        assert redact_text(body) == '{"user": "u", "password": "***", "Authorization": "***", "sig": "***"}'

    def test_json_inside_a_json_string(self) -> None:
        """Vendors echo request bodies as strings: the quotes there are escaped."""
        body = '{"body": "{\\"username\\": \\"svc\\", \\"password\\": \\"pw-1\\"}"}'
        assert redact_text(body) == '{"body": "{\\"username\\": \\"svc\\", \\"password\\": \\"***\\"}"}'

    def test_python_repr_of_a_mapping(self) -> None:
        """Exception messages carry reprs, with either quote style for values."""
        text = "{'client_id': 'c', 'client_secret': 'cs-1', 'password': \"it's\"}"
        assert redact_text(text) == "{'client_id': 'c', 'client_secret': '***', 'password': '***'}"

    def test_redaction_is_idempotent(self) -> None:
        once = redact_text('{"token": "t", "x": "Bearer abcdefgh"} sig=abc')
        assert once == '{"token": "***", "x": "Bearer ***"} sig=***'
        assert redact_text(once) == once


class TestQuickScan:
    """Texts that hold none of what any pattern needs are returned without substituting."""

    @settings(max_examples=300)
    @given(_TEXTS)
    @example("bAsIc abcdefgh")  # one of each thing the scan looks for, alone
    @example("Bearer abcdefgh")
    @example('"password":"v1"')
    @example("sig=abc")
    def test_the_scan_never_skips_a_text_a_pattern_would_change(self, text: str) -> None:
        assert redact_text(text) == substitute_patterns(text)

    @settings(max_examples=300)
    @given(
        st.tuples(
            st.sampled_from(["Bearer", "bAsIc", "basic"]),
            st.sampled_from([" ", "\t", "\n", "\u00a0", "\u2003", "\u3000", "\x1c", "\x85"]),
            st.text(alphabet="abcdefgh0123456789-._~+/", min_size=6, max_size=12),
        ).map("".join)
    )
    def test_a_scheme_before_any_whitespace_is_masked(self, text: str) -> None:
        """No ``=`` or ``:`` in these: only the whitespace sends them to the patterns."""
        assert redact_text(text) == substitute_patterns(text) != text

    def test_every_character_the_patterns_read_as_whitespace_takes_the_slow_path(self) -> None:
        """The quick check lets a text through untouched when it has no ``=``, ``:`` or
        space and ``isprintable`` holds: no other character may match ``\\s``."""
        whitespace = re.compile(r"\s")
        taken_as_plain = [
            hex(code)
            for code in range(sys.maxunicode + 1)
            if not 0xD800 <= code <= 0xDFFF
            and whitespace.match(chr(code))
            and chr(code) != " "
            and chr(code).isprintable()
        ]
        assert taken_as_plain == []

    @pytest.mark.parametrize("text", ["t-123", "itron", "RUNNING", "vendor call failed", "7f3a-9c"])
    def test_plain_values_come_back_as_the_same_object(self, text: str) -> None:
        assert redact_text(text) is text


class TestMappings:
    def test_nested_mappings_lists_and_tuples(self) -> None:
        value = {
            "headers": {"Authorization": "Bearer abcdefgh", "Accept": "application/json"},
            "body": {"password": "pw", "user": "u"},
            "items": [{"token": "t"}, "https://x/?sig=abc&se=1"],
            "pair": ("Bearer abcdefgh", 3),
            "count": 3,
            "X-ApiKey": "k",
        }
        assert redact(value) == {
            "headers": {"Authorization": MASK, "Accept": "application/json"},
            "body": {"password": MASK, "user": "u"},
            "items": [{"token": MASK}, "https://x/?sig=***&se=1"],
            "pair": ("Bearer ***", 3),
            "count": 3,
            "X-ApiKey": MASK,
        }

    def test_a_secret_key_masks_the_whole_value_whatever_it_holds(self) -> None:
        assert redact({"client_secret": {"value": "x"}, "cookie": ["a", "b"]}) == {
            "client_secret": MASK,
            "cookie": MASK,
        }

    def test_the_input_is_not_changed(self) -> None:
        value = {"password": "pw"}
        redact(value)
        assert value == {"password": "pw"}


class TestExcerpt:
    @pytest.mark.parametrize(
        ("body", "expected"),
        [(None, "<no body>"), (b"", "<empty body>"), (" \n\t ", "<empty body>"), (b"a\n  b\tc", "a b c")],
        ids=["none", "empty", "blank", "whitespace-collapsed"],
    )
    def test_short_bodies(self, body: bytes | str | None, expected: str) -> None:
        assert excerpt(body) == expected

    def test_undecodable_bytes_are_replaced(self) -> None:
        assert excerpt(b"\xff ok") == "\ufffd ok"

    def test_long_bodies_are_cut_at_the_limit(self) -> None:
        assert excerpt("0123456789" * 3, limit=12) == "012345678901..."
        assert excerpt("x" * 300) == "x" * 300

    def test_a_secret_across_the_limit_is_redacted_before_the_cut(self) -> None:
        """Cutting first would leave the start of the token behind an unrecognisable stub."""
        body = "x" * 295 + " Bearer abcdefghijklmnop tail"
        assert excerpt(body) == "x" * 295 + " Bear..."

    def test_secrets_in_an_answer_are_masked(self) -> None:
        body = b'{"error": "invalid_client",\n "client_secret": "s3cr3t"}'
        assert excerpt(body) == '{"error": "invalid_client", "client_secret": "***"}'


class TestLogProcessor:
    def test_secret_keys_are_masked_and_values_scrubbed(self) -> None:
        event = {
            "event": "GET https://x/a.zip?sig=abc&se=1 failed",
            "client_secret": "cs",
            "Authorization": "Bearer abcdefgh",
            "headers": {"Authorization": "Bearer abcdefgh", "Accept": "*/*"},
            "error": "poll: HTTP 400: password=hunter2",
            "attempt": 3,
        }
        assert redact_processor(None, "info", event) == {
            "event": "GET https://x/a.zip?sig=***&se=1 failed",
            "client_secret": MASK,
            "Authorization": MASK,
            "headers": {"Authorization": MASK, "Accept": "*/*"},
            "error": "poll: HTTP 400: password=***",
            "attempt": 3,
        }
