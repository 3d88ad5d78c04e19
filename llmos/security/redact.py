"""Redaction of personal data (emails, phone numbers, payment card numbers) in text that is
stored or logged. Conservative by design: a card number must pass the Luhn check and a phone
number needs 8-15 digits, so ordinary numbers (token counts, pids, dates) are left alone.
"""

from __future__ import annotations

import logging
import re

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# 13-19 digits, optionally grouped by single spaces or dashes.
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# An optional +country code, then groups of digits split by spaces, dots, dashes or parens.
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d(?:[ .-]?\d){6,13}(?!\w)"
)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group(0))
    return "[CARD]" if 13 <= len(digits) <= 19 and _luhn_ok(digits) else m.group(0)


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{2}[./-]\d{2}[./-]\d{4}")


def _phone(m: re.Match[str]) -> str:
    text = m.group(0)
    digits = re.sub(r"\D", "", text)
    return "[PHONE]" if 8 <= len(digits) <= 15 and not _DATE.fullmatch(text) else text


def redact(text: str) -> str:
    """`text` with emails, card numbers and phone numbers replaced by placeholders."""
    text = EMAIL.sub("[EMAIL]", text)
    text = CARD.sub(_card, text)
    return PHONE.sub(_phone, text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's formatted message in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_log_redaction(logger_name: str = "llmos") -> None:
    """Redact every record that reaches `logger_name`'s handlers (call after log setup)."""
    for handler in logging.getLogger(logger_name).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
