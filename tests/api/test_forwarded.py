"""The client address behind trusted proxies: forwarded headers count only from a trusted peer,
are read right to left, and garbage never raises."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmos.api.forwarded import client_address, parse_address, trusted_networks

PROXIES = trusted_networks(("127.0.0.1", "10.0.0.0/8", "fd00::/8"))


def test_untrusted_peer_headers_are_ignored() -> None:
    assert client_address("203.0.113.9", PROXIES, ["198.51.100.1"], []) == "203.0.113.9"
    assert client_address("203.0.113.9", (), ["198.51.100.1"], []) == "203.0.113.9"
    assert client_address("203.0.113.9", PROXIES, [], ["for=198.51.100.1"]) == "203.0.113.9"


def test_trusted_peer_names_the_client() -> None:
    assert client_address("127.0.0.1", PROXIES, ["198.51.100.1"], []) == "198.51.100.1"
    # a client's forged entry sits left of what the trusted proxies appended
    chain = ["6.6.6.6, 198.51.100.1, 10.1.2.3"]
    assert client_address("127.0.0.1", PROXIES, chain, []) == "198.51.100.1"
    # several X-Forwarded-For headers are one list, in order
    assert client_address("10.0.0.1", PROXIES, ["6.6.6.6", "198.51.100.2"], []) == "198.51.100.2"


def test_forwarded_header_when_no_x_forwarded_for() -> None:
    value = 'for=6.6.6.6, for="[2001:db8::17]:4711";proto=https;by=10.0.0.1'
    assert client_address("10.0.0.1", PROXIES, [], [value]) == "2001:db8::17"
    assert client_address("10.0.0.1", PROXIES, [], ["For=198.51.100.3:80"]) == "198.51.100.3"


def test_all_trusted_or_garbage_stops_at_the_last_trusted_hop() -> None:
    assert client_address("127.0.0.1", PROXIES, ["10.0.0.7"], []) == "10.0.0.7"
    assert client_address("127.0.0.1", PROXIES, ["nonsense"], []) == "127.0.0.1"
    assert client_address("127.0.0.1", PROXIES, ["1.2.3.4, junk, 10.0.0.9"], []) == "10.0.0.9"
    assert client_address("127.0.0.1", PROXIES, [], ["for=_hidden"]) == "127.0.0.1"
    assert client_address("unknown", PROXIES, ["1.2.3.4"], []) == "unknown"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        ("1.2.3.4:8080", "1.2.3.4"),
        ("[::1]:80", "::1"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ('"[2001:db8::1]"', "2001:db8::1"),
        ("", None),
        ("[", None),
        ("1.2.3.4.5", None),
    ],
)
def test_parse_address(text: str, expected: str | None) -> None:
    parsed = parse_address(text)
    assert (str(parsed) if parsed is not None else None) == expected


@given(st.text(max_size=200), st.text(max_size=200))
def test_garbage_headers_never_raise(xff: str, fwd: str) -> None:
    address = client_address("127.0.0.1", PROXIES, [xff], [fwd])
    assert address == "127.0.0.1" or parse_address(address) is not None
