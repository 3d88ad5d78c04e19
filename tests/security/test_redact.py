"""Redaction of emails, phone numbers and card numbers; ordinary numbers are left alone."""

from __future__ import annotations

import logging

import pytest

from llmos.security.redact import RedactingFilter, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail jane.doe+x@example.co.uk now", "mail [EMAIL] now"),
        ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
        ("card 4111-1111-1111-1111", "card [CARD]"),
        ("call +1 (415) 555-0132 today", "call [PHONE] today"),
        ("call 020 7946 0958", "call [PHONE]"),
        ("pid 1234, 512 tokens, 2026-11-25", "pid 1234, 512 tokens, 2026-11-25"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_luhn_failure_is_not_a_card() -> None:
    assert "[CARD]" not in redact("order 4111 1111 1111 1112")


def test_logging_filter() -> None:
    record = logging.LogRecord("llmos.x", logging.INFO, __file__, 1, "user %s", ("a@b.io",), None)
    RedactingFilter().filter(record)
    assert record.getMessage() == "user [EMAIL]"
