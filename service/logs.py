"""Log set-up for `python -m service`: one line per record, with client-controlled characters escaped.

Paths and header values come from clients. Written raw, an ESC sequence (``\\x1b[31m``) repaints an operator's
terminal, a bidi override (U+202E) makes a line read backwards, and a newline forges a second log line. Every
record's message is therefore escaped (``\\x1b``, ``\\u202e``, ``\\n``) before it is formatted; tracebacks, which
only the server writes, keep their newlines.
"""

from __future__ import annotations

import logging
import re

# C0/C1 controls (newline and tab included), DEL, zero-width and bidi formatting characters, line/paragraph
# separators and the BOM.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def escape(text: str) -> str:
    """Replace every unsafe character with its Python escape, so the line shows what was sent, inertly."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class EscapingFormatter(logging.Formatter):
    """A `logging.Formatter` whose `%(message)s` never carries raw control or bidi characters."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)


def configure_logging(level: str) -> None:
    """Root handler on stderr with the escaping formatter; uvicorn's loggers propagate to it (log_config=None)."""
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
