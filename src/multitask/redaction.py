"""Credentials never leave the process: every URL that is logged, printed, raised or sent to
MLflow goes through :func:`redact` first (``postgresql://user:***@host/db``)."""

from __future__ import annotations

import logging
import re

# scheme://user:password@host -> scheme://user:***@host; scheme://token@host -> scheme://***@host
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/@:]*)"
                       r"(?P<password>:[^\s/@]*)?@")


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it masked, for logs, errors and MLflow."""
    def mask(match: re.Match[str]) -> str:
        user = match["user"] if match["password"] is not None else ""
        return f"{match['scheme']}{user}{':' if user else ''}***@"

    return _USERINFO.sub(mask, text)


class RedactingFilter(logging.Filter):
    """A logging filter that masks credentials in the final message of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        return True
