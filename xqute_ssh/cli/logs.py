"""How the CLI shows the engine's log records: one line each, each cause once.

Off a terminal (a pipe, a file, CI) a record is one line, never wrapped at
80 columns, so a suggested fix such as ``ssh-keyscan ... >> known_hosts``
stays whole and ``grep`` finds it.  On a terminal rich's handler may wrap
it for the eye.

A host that refuses us makes every job that tries it fail the same way, and
several layers say so (the pool, the scheduler's retry on another host, the
submission's failure).  :class:`SaidOnce` lets the first record of a cause
through and drops later records that repeat it or quote it: 30 jobs against
a host with an unknown key give one warning, not 420 lines.  Each job's own
account stays in its ``job.stderr``; the summary names the failed jobs.
"""

from __future__ import annotations

import logging

#: Messages shorter than this are never treated as quoting one another
#: ("killing 3 running job(s)" is not a cause worth matching inside others).
MIN_CAUSE_LEN = 30
#: How many distinct messages are remembered (a bound on memory and time).
MAX_REMEMBERED = 500


def one_line(text: str) -> str:
    """``text`` with its line breaks turned into `` | `` (one record, one line)."""
    parts = [p.rstrip() for p in text.splitlines() if p.strip()]
    return " | ".join(parts)


class OneLineFormatter(logging.Formatter):
    """``LEVEL message`` on one line; a traceback, if any, joins the line."""

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))


class SaidOnce(logging.Filter):
    """Drop records at WARNING and above that repeat what was already said.

    A record is dropped when its message equals, contains, or is contained in
    a message already let through (messages of ``MIN_CAUSE_LEN`` characters
    or more).  ``dropped`` counts them, so the CLI can say how many.  Records
    below WARNING (``-v``) all pass: there the user asked for everything.
    """

    def __init__(self) -> None:
        super().__init__()
        self.said: list[str] = []
        self.dropped = 0

    def _repeats(self, message: str) -> bool:
        if len(message) < MIN_CAUSE_LEN:
            return message in self.said
        return any(
            len(old) >= MIN_CAUSE_LEN and (old in message or message in old)
            for old in self.said
        )

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        if self._repeats(message):
            self.dropped += 1
            return False
        if len(self.said) < MAX_REMEMBERED:
            self.said.append(message)
        return True
