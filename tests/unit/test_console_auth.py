"""Console sign-in: session cookies signed with a key derived from the token, their
expiry, CSRF tokens derived from the session, operator names, and the Origin check."""

from __future__ import annotations

import base64
import json
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from worker.console.auth import MAX_NAME, SESSION_S, ConsoleAuth, Session, clean_name, same_origin

TOKEN = SecretStr("correct horse battery staple")
T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def auth(clock: FakeClock) -> ConsoleAuth:
    return ConsoleAuth(TOKEN, clock=clock)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ---- read-only consoles --------------------------------------------------------------------------


class TestDisabled:
    @pytest.mark.parametrize("token", [None, SecretStr("")])
    def test_no_token_means_read_only(self, token: SecretStr | None, clock: FakeClock) -> None:
        auth = ConsoleAuth(token, clock=clock)
        assert auth.enabled is False
        assert auth.check_token("") is False
        assert auth.check_token("anything") is False

    @pytest.mark.parametrize("token", [None, SecretStr("")])
    def test_no_session_is_ever_accepted(self, token: SecretStr | None, clock: FakeClock) -> None:
        auth = ConsoleAuth(token, clock=clock)
        # A cookie the read-only console itself would sign (key derived from "").
        assert auth.session(auth.sign_in("mallory", "n")) is None
        assert auth.session(None) is None
        assert auth.session("") is None

    def test_a_cookie_from_an_enabled_console_is_refused_when_read_only(self, clock: FakeClock) -> None:
        cookie = ConsoleAuth(TOKEN, clock=clock).sign_in("ana", "n")
        assert ConsoleAuth(None, clock=clock).session(cookie) is None

    def test_enabled_with_a_token(self, auth: ConsoleAuth) -> None:
        assert auth.enabled is True


class TestCheckToken:
    def test_right_token(self, auth: ConsoleAuth) -> None:
        assert auth.check_token(TOKEN.get_secret_value()) is True

    @pytest.mark.parametrize(
        "offered",
        ["", "correct horse battery stapl", "correct horse battery staple ", "CORRECT HORSE BATTERY STAPLE", "é"],
    )
    def test_wrong_token(self, auth: ConsoleAuth, offered: str) -> None:
        assert auth.check_token(offered) is False


# ---- sessions ------------------------------------------------------------------------------------


class TestSession:
    def test_round_trip(self, auth: ConsoleAuth) -> None:
        cookie = auth.sign_in("ana", "nonce-1")
        assert auth.session(cookie) == Session("ana", int(T0) + SESSION_S, "nonce-1")

    def test_expiry_follows_the_clock_at_sign_in(self, auth: ConsoleAuth, clock: FakeClock) -> None:
        clock.now = T0 + 123.9
        session = auth.session(auth.sign_in("ana", "n"))
        assert session is not None and session.expires_at == int(T0) + 123 + SESSION_S

    def test_the_name_is_cleaned_at_sign_in(self, auth: ConsoleAuth) -> None:
        session = auth.session(auth.sign_in("  ana\n\x1b[31m ", "n"))
        assert session is not None and session.who == "ana[31m"

    def test_a_name_that_cleans_to_nothing_is_no_session(self, auth: ConsoleAuth) -> None:
        assert auth.session(auth.sign_in(" \n\t ", "n")) is None

    def test_valid_until_just_before_expiry(self, auth: ConsoleAuth, clock: FakeClock) -> None:
        cookie = auth.sign_in("ana", "n")
        clock.now = T0 + SESSION_S - 1
        assert auth.session(cookie) is not None

    def test_expired_at_expiry(self, auth: ConsoleAuth, clock: FakeClock) -> None:
        cookie = auth.sign_in("ana", "n")
        clock.now = int(T0) + SESSION_S
        assert auth.session(cookie) is None
        clock.now = T0 + 10 * SESSION_S
        assert auth.session(cookie) is None

    def test_token_rotation_signs_everyone_out(self, auth: ConsoleAuth, clock: FakeClock) -> None:
        cookie = auth.sign_in("ana", "n")
        rotated = ConsoleAuth(SecretStr("a new token"), clock=clock)
        assert rotated.session(cookie) is None
        assert ConsoleAuth(TOKEN, clock=clock).session(cookie) is not None  # same token: still valid

    def test_a_tampered_payload_is_refused(self, auth: ConsoleAuth) -> None:
        cookie = auth.sign_in("ana", "n")
        payload, signature = cookie.rsplit(".", 1)
        data = json.loads(unb64(payload))
        for change in ({"who": "root"}, {"exp": data["exp"] + 10**6}, {"n": "other"}):
            forged = json.dumps({**data, **change}, separators=(",", ":")).encode()
            assert auth.session(f"{b64(forged)}.{signature}") is None

    def test_a_flipped_payload_character_is_refused(self, auth: ConsoleAuth) -> None:
        cookie = auth.sign_in("ana", "n")
        payload, signature = cookie.rsplit(".", 1)
        changed = 0
        for i in range(len(payload)):
            flipped = payload[:i] + ("A" if payload[i] != "A" else "B") + payload[i + 1 :]
            if unb64(flipped) == unb64(payload):
                continue  # only the unused low bits of the last character changed
            changed += 1
            assert auth.session(f"{flipped}.{signature}") is None, i
        assert changed >= len(payload) - 1

    def test_a_tampered_signature_is_refused(self, auth: ConsoleAuth) -> None:
        cookie = auth.sign_in("ana", "n")
        payload, signature = cookie.rsplit(".", 1)
        other = "0" if signature[0] != "0" else "1"
        assert auth.session(f"{payload}.{other}{signature[1:]}") is None
        assert auth.session(f"{payload}.{signature[:-1]}") is None
        assert auth.session(f"{payload}.{signature}0") is None
        assert auth.session(f"{payload}.{signature.upper()}") is None
        assert auth.session(f"{payload}.") is None
        assert auth.session(payload) is None

    def test_an_unsigned_but_well_formed_payload_is_refused(self, auth: ConsoleAuth) -> None:
        raw = Session("root", int(T0) + SESSION_S, "n").raw
        assert auth.session(f"{b64(raw)}.{'0' * 64}") is None

    @pytest.mark.parametrize(
        "cookie",
        [
            "",
            ".",
            "..",
            "nodot",
            "a.b.c",
            "!!!.abc",
            "====.====",
            "%%%%%%%%.deadbeef",
            "eyJ3aG8iOiJhbmEifQ",
            "eyJ3aG8iOiJhbmEifQ.",
            "x" * 5000 + "." + "0" * 64,
            "A" * 1020 + "." + "0" * 64,
            "\x00.\x00",
            "é.abc",
            "\udcff.x",
        ],
    )
    def test_garbage_cookies_are_no_session(self, auth: ConsoleAuth, cookie: str) -> None:
        assert auth.session(cookie) is None

    def test_random_cookies_are_no_session(self, auth: ConsoleAuth) -> None:
        for _ in range(200):
            assert auth.session(secrets.token_urlsafe(40) + "." + secrets.token_hex(32)) is None
            assert auth.session(secrets.token_urlsafe(60)) is None

    def test_an_oversized_cookie_is_refused_even_if_validly_signed(self, auth: ConsoleAuth) -> None:
        cookie = auth.sign_in("ana", "n" * 2000)
        assert len(cookie) > 1024
        assert auth.session(cookie) is None

    def test_a_non_ascii_signature_is_no_session(self, auth: ConsoleAuth) -> None:
        """BUG (worker/console/auth.py, ConsoleAuth.session): the signature part of the
        cookie is compared with ``hmac.compare_digest(str, str)``, which raises TypeError
        for non-ASCII strings. aiohttp hands such cookie values through (a request with
        ``Cookie: export_worker_console=abc.é`` reaches ``session`` as "abc.é"), so any
        client can turn every page of a console with a token into a 500."""
        cookie = auth.sign_in("ana", "n")
        payload, signature = cookie.rsplit(".", 1)
        assert auth.session("abc.é") is None
        assert auth.session(f"{payload}.{signature[:-1]}é") is None

    @settings(max_examples=500, deadline=None)
    @given(cookie=st.one_of(st.text(max_size=200), st.builds("{}.{}".format, st.text(), st.text())))
    def test_arbitrary_text_never_raises(self, cookie: str) -> None:
        auth = ConsoleAuth(TOKEN, clock=lambda: T0)
        assert auth.session(cookie) is None

    @settings(max_examples=300, deadline=None)
    @given(
        payload=st.text(st.characters(codec="ascii"), max_size=120),
        signature=st.text(st.characters(codec="ascii"), max_size=80),
    )
    def test_arbitrary_ascii_cookies_never_raise(self, payload: str, signature: str) -> None:
        auth = ConsoleAuth(TOKEN, clock=lambda: T0)
        assert auth.session(f"{payload}.{signature}") is None
        assert auth.session(payload) is None

    @settings(max_examples=200, deadline=None)
    @given(who=st.text(max_size=100), nonce=st.text(max_size=40))
    def test_any_sign_in_round_trips(self, who: str, nonce: str) -> None:
        auth = ConsoleAuth(TOKEN, clock=lambda: T0)
        cookie = auth.sign_in(who, nonce)
        session = auth.session(cookie)
        if len(cookie) > 1024 or not clean_name(who):
            assert session is None
        else:
            assert session == Session(clean_name(who), int(T0) + SESSION_S, nonce)


# ---- CSRF ------------------------------------------------------------------------------------------


class TestCsrf:
    def test_deterministic_per_session(self, auth: ConsoleAuth, clock: FakeClock) -> None:
        session = auth.session(auth.sign_in("ana", "n1"))
        assert session is not None
        token = auth.csrf(session)
        assert len(token) == 64 and int(token, 16) >= 0
        assert auth.csrf(session) == token
        assert ConsoleAuth(TOKEN, clock=clock).csrf(Session("ana", session.expires_at, "n1")) == token
        assert auth.check_csrf(session, token) is True

    def test_differs_between_sessions(self, auth: ConsoleAuth) -> None:
        base = Session("ana", int(T0) + SESSION_S, "n1")
        others = [
            Session("ana", int(T0) + SESSION_S, "n2"),
            Session("bob", int(T0) + SESSION_S, "n1"),
            Session("ana", int(T0) + SESSION_S + 1, "n1"),
        ]
        tokens = {auth.csrf(s) for s in [base, *others]}
        assert len(tokens) == 4
        for other in others:
            assert auth.check_csrf(base, auth.csrf(other)) is False
            assert auth.check_csrf(other, auth.csrf(base)) is False

    def test_differs_between_tokens(self, auth: ConsoleAuth, clock: FakeClock) -> None:
        session = Session("ana", int(T0) + SESSION_S, "n1")
        rotated = ConsoleAuth(SecretStr("another"), clock=clock)
        assert rotated.csrf(session) != auth.csrf(session)
        assert rotated.check_csrf(session, auth.csrf(session)) is False

    def test_is_not_the_cookie_signature(self, auth: ConsoleAuth) -> None:
        cookie = auth.sign_in("ana", "n1")
        session = auth.session(cookie)
        assert session is not None
        assert auth.check_csrf(session, cookie.rsplit(".", 1)[1]) is False

    @pytest.mark.parametrize("offered", ["", "0" * 64, "é", "x" * 10_000])
    def test_rejects_others(self, auth: ConsoleAuth, offered: str) -> None:
        session = Session("ana", int(T0) + SESSION_S, "n1")
        assert auth.check_csrf(session, offered) is False

    def test_rejects_a_near_miss(self, auth: ConsoleAuth) -> None:
        session = Session("ana", int(T0) + SESSION_S, "n1")
        token = auth.csrf(session)
        assert auth.check_csrf(session, token[:-1]) is False
        assert auth.check_csrf(session, token + "0") is False
        assert auth.check_csrf(session, token.upper()) is (token.upper() == token)


# ---- names and origins ----------------------------------------------------------------------------


class TestCleanName:
    @pytest.mark.parametrize(
        ("raw", "clean"),
        [
            ("ana", "ana"),
            ("  ana  ", "ana"),
            ("ana\nbob", "anabob"),
            ("ana\r\nINFO forged log line", "anaINFO forged log line"),
            ("a\tb\x00c\x7fd\x1be", "abcde"),
            ("\u200bana\u2028", "ana"),
            ("José Ñúñez", "José Ñúñez"),
            ("", ""),
            ("\n\t ", ""),
        ],
    )
    def test_cleans(self, raw: str, clean: str) -> None:
        assert clean_name(raw) == clean

    def test_bounds_length(self) -> None:
        assert clean_name("x" * 1000) == "x" * MAX_NAME
        assert clean_name("y" * MAX_NAME) == "y" * MAX_NAME
        assert clean_name("\n" * 1000 + "z" * (MAX_NAME + 5)) == "z" * MAX_NAME

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=300))
    def test_always_printable_single_line_and_bounded(self, raw: str) -> None:
        name = clean_name(raw)
        assert len(name) <= MAX_NAME
        assert name.isprintable()
        assert "\n" not in name and "\r" not in name
        assert clean_name(name) == name.strip()


class TestSameOrigin:
    @pytest.mark.parametrize("host", ["console.example.com", "localhost:8080", None])
    def test_no_origin_is_allowed(self, host: str | None) -> None:
        assert same_origin(None, host) is True

    @pytest.mark.parametrize("scheme", ["http", "https"])
    def test_same_host_either_scheme(self, scheme: str) -> None:
        assert same_origin(f"{scheme}://console.example.com", "console.example.com") is True
        assert same_origin(f"{scheme}://localhost:8080", "localhost:8080") is True

    @pytest.mark.parametrize(
        "origin",
        [
            "https://evil.example.com",
            "https://console.example.com.evil.com",
            "https://console.example.com:8443",
            "http://localhost:8081",
            "ftp://console.example.com",
            "console.example.com",
            "https://console.example.com/",
            "null",
            "",
        ],
    )
    def test_another_origin_is_refused(self, origin: str) -> None:
        assert same_origin(origin, "console.example.com") is False

    def test_a_port_mismatch_is_refused(self) -> None:
        assert same_origin("http://localhost", "localhost:8080") is False

    def test_no_host_is_refused(self) -> None:
        assert same_origin("https://console.example.com", None) is False
        assert same_origin("", None) is False
