"""How output is shown: live (a terminal), plain (a pipe or file), or quiet.

Also routes the engine's logger (``xqute_ssh``) for the duration of a command:
in live mode through rich's RichHandler on the display's console, so log
lines appear above the live display instead of tearing it; otherwise as plain
``LEVEL message`` lines on stderr, one line per record (see :mod:`.logs`).
Either way a cause is said once (:class:`.logs.SaidOnce`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from rich.console import Console
from rich.logging import RichHandler

from ..outcome import FINAL_FAILURE
from .logs import OneLineFormatter, SaidOnce
from .progress import LiveView, PlainView, QuietView, View
from .tally import Tally

LOGGER_NAME = "xqute_ssh"


class Mode(StrEnum):
    LIVE = "live"
    PLAIN = "plain"
    QUIET = "quiet"


@dataclass
class Output:
    """The consoles of one CLI command and how they are used."""

    mode: Mode
    console: Console  # stdout: the jobs' output; on a terminal also the display, the summary
    err_console: Console  # stderr: logs, job lines and the summary off a terminal

    @classmethod
    def choose(cls, quiet: bool = False, console: Console | None = None) -> Output:
        """Live when stdout is a real terminal, plain lines otherwise."""
        console = console or Console(highlight=False)
        err = Console(stderr=True, highlight=False)
        if quiet:
            mode = Mode.QUIET
        elif console.is_terminal and not console.is_dumb_terminal:
            mode = Mode.LIVE
        else:
            mode = Mode.PLAIN
        return cls(mode, console, err)

    @property
    def report_console(self) -> Console:
        """Where our own report goes: the terminal's display, else stderr.

        Off a terminal stdout carries only the jobs' own output, as with GNU
        parallel, so ``xqute-ssh run ... > out.txt`` captures just that.
        """
        return self.console if self.mode == Mode.LIVE else self.err_console

    def view(self, tally: Tally, n_skip: int = 0) -> View:
        if self.mode == Mode.LIVE:
            return LiveView(self.console, tally, n_skip)
        if self.mode == Mode.PLAIN:
            return PlainView(self.err_console.file)
        return QuietView()

    @contextlib.contextmanager
    def engine_logging(self, verbose: bool = False) -> Iterator[None]:
        """Send the engine's log records through RichHandler while inside.

        WARNING by default, INFO with ``-v``, ERROR only with ``--quiet``.
        The logger's previous level and handlers are restored afterwards.
        """
        if self.mode == Mode.QUIET:
            level = logging.ERROR
        else:
            level = logging.INFO if verbose else logging.WARNING
        handler: logging.Handler
        if self.mode == Mode.LIVE:
            handler = RichHandler(
                console=self.console,
                show_time=False,
                show_path=False,
                markup=False,
                rich_tracebacks=False,
            )
        else:
            handler = logging.StreamHandler(self.err_console.file)
            handler.setFormatter(OneLineFormatter("%(levelname)s %(message)s"))
        once = SaidOnce()
        handler.addFilter(once)
        if not verbose:
            # The CLI reports each failed job itself (job lines, summary).
            handler.addFilter(lambda record: not getattr(record, FINAL_FAILURE, False))
        handler.setLevel(level)
        logger = logging.getLogger(LOGGER_NAME)
        old_level, old_propagate = logger.level, logger.propagate
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False  # shown once, here
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
            logger.propagate = old_propagate
            if once.dropped and self.mode != Mode.QUIET:
                self.err_console.file.write(
                    f"({once.dropped} repeated log message(s) not shown; "
                    "each job's job.stderr has its own account)\n"
                )
                self.err_console.file.flush()
