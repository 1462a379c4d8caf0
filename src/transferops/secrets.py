"""Credentials stay in the environment: they are masked wherever transferops prints or logs text.

Credentials reach transferops only through environment variables (or Kubernetes secrets mounted as them);
nothing reads them from params, and params are what gets logged to MLflow. As a second line of defence,
every log record and error message is scrubbed of the values of credential-like variables and of the
password part of URLs.
"""

from __future__ import annotations

import logging
import os
import re

SECRET_NAME = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|PRIVATE|CREDENTIAL|API_KEY)", re.IGNORECASE)
URL_PASSWORD = re.compile(r"([A-Za-z][\w+.-]*://[^:/@\s]*):\S*@")
"""``scheme://user:password@host``: any scheme (``postgresql+psycopg``), an empty user; masked up to the last
``@`` of the word, so a password with a raw ``@``, ``/`` or ``#`` in it is masked whole."""
QUERY_PASSWORD = re.compile(r"(?i)\b(password=)[^&\s]+")
"""``...?password=...`` in a URL query, or ``password=...`` in a libpq key/value connection string."""


def secret_values() -> list[str]:
    """Values of the credential-like environment variables (longest first, so overlapping values mask fully)."""
    values = {v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 4}
    return sorted(values, key=len, reverse=True)


def mask(text: str) -> str:
    """``text`` with every credential value and URL password replaced by ``***``."""
    for value in secret_values():
        text = text.replace(value, "***")
    text = URL_PASSWORD.sub(r"\1:***@", text)
    return QUERY_PASSWORD.sub(r"\1***", text)


class SecretMaskingFilter(logging.Filter):
    """Scrubs each record's final message (installed on the handlers by the CLI)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
