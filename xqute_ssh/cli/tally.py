"""Counting jobs by outcome and host: pure bookkeeping, no I/O, no output.

The plugin feeds events in; the live display, the plain lines and the final
summary only read from here, so what they show always agrees and the counts
can be tested without running anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Outcome(StrEnum):
    """How a job ended, as the CLI reports it."""

    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"
    SKIPPED = "SKIPPED"  # already finished in the workdir (--resume)

    @property
    def ok(self) -> bool:
        return self in (Outcome.FINISHED, Outcome.SKIPPED)


@dataclass
class HostCounts:
    """Jobs of one host: running now, and how those that ended went."""

    running: int = 0
    finished: int = 0
    failed: int = 0


@dataclass(frozen=True)
class Ending:
    """One job's end, kept for the summary's list of failures."""

    index: int
    outcome: Outcome
    rc: int | None
    host: str


@dataclass
class Tally:
    """Where each job is: waiting, running on a host, or ended and how."""

    total: int
    finished: int = 0
    failed: int = 0
    skipped: int = 0
    hosts: dict[str, HostCounts] = field(default_factory=dict)
    failures: list[Ending] = field(default_factory=list)
    _running: dict[int, str] = field(default_factory=dict)
    _ended: set[int] = field(default_factory=set)

    def __repr__(self) -> str:
        return (
            f"<Tally {self.total} jobs: {self.running} running, "
            f"{self.finished} finished, {self.failed} failed, "
            f"{self.skipped} skipped, {self.waiting} waiting>"
        )

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def ended(self) -> int:
        return self.finished + self.failed + self.skipped

    @property
    def waiting(self) -> int:
        """Jobs not started yet (or never run: after a halt or Ctrl-C)."""
        return self.total - self.ended - self.running

    def host_of_running(self, index: int) -> str | None:
        return self._running.get(index)

    def started(self, index: int, host: str) -> None:
        """An attempt of job ``index`` holds a slot on ``host`` (idempotent)."""
        if index in self._running or index in self._ended:
            return
        self._running[index] = host
        self.hosts.setdefault(host, HostCounts()).running += 1

    def requeued(self, index: int) -> None:
        """The attempt ended and the job waits again (a retry)."""
        host = self._running.pop(index, None)
        if host is not None:
            self.hosts[host].running -= 1

    def ended_as(self, index: int, outcome: Outcome, rc: int | None, host: str) -> Ending | None:
        """Job ``index`` ended for good; None if it had already ended.

        The host is the one it ran on, when it was seen running.
        """
        if index in self._ended:
            return None
        self._ended.add(index)
        ran_on = self._running.pop(index, None)
        if ran_on is not None:
            host = ran_on
            self.hosts[host].running -= 1
        if outcome == Outcome.SKIPPED:
            self.skipped += 1
        else:
            counts = self.hosts.setdefault(host, HostCounts())
            if outcome.ok:
                self.finished += 1
                counts.finished += 1
            else:
                self.failed += 1
                counts.failed += 1
        ending = Ending(index, outcome, rc, host)
        if not outcome.ok:
            self.failures.append(ending)
        return ending
