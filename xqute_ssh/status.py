"""Job statuses, error strategies and which status changes are legal.

The integer values are the ones xqute writes to ``job.status``, so tools that
read an xqute workdir read ours too.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class JobStatus(IntEnum):
    """Where a job is in its life; the value is what ``job.status`` holds."""

    INIT = 0
    QUEUED = 2
    SUBMITTED = 3
    RUNNING = 4
    KILLING = 5
    FINISHED = 6
    FAILED = 7

    @property
    def is_terminal(self) -> bool:
        """True once nothing more will happen to this attempt."""
        return self in (JobStatus.FINISHED, JobStatus.FAILED)

    @property
    def is_active(self) -> bool:
        """True while the attempt holds a job slot on a host."""
        return self in (JobStatus.SUBMITTED, JobStatus.RUNNING, JobStatus.KILLING)

    @classmethod
    def parse(cls, text: str | bytes) -> JobStatus | None:
        """Read a status file's content; None when it is empty or garbled.

        A half-written file is possible on file systems without atomic
        rename; the caller then keeps the status it had.
        """
        try:
            return cls(int(text.strip() or "x"))
        except ValueError:
            return None


#: The rc recorded for a job that we killed (Ctrl-C, a halt, ``kill_job``)
#: and that did not finish by itself first: minus the signal, SIGTERM, as
#: Python's subprocess reports a signal death.  ``status`` shows such a
#: FAILED job as KILLED, like ``run`` does.  (A timeout is rc 124.)
KILLED_RC = -15


class JobErrorStrategy(StrEnum):
    """What to do when a job fails."""

    IGNORE = "ignore"
    RETRY = "retry"
    HALT = "halt"

    @classmethod
    def parse(cls, value: str | JobErrorStrategy) -> JobErrorStrategy:
        from .errors import ConfigError

        try:
            return cls(value)
        except ValueError:
            known = ", ".join(repr(s.value) for s in cls)
            raise ConfigError(
                f"error_strategy {value!r} is not one of {known}"
            ) from None


# Status changes the controller may make.  The wrapper on the host moves a job
# SUBMITTED -> RUNNING -> FINISHED/FAILED by writing the status file; the
# controller never moves a job backwards over what the wrapper wrote.
_FORWARD: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.INIT: frozenset({JobStatus.QUEUED, JobStatus.FAILED}),
    JobStatus.QUEUED: frozenset(
        {JobStatus.SUBMITTED, JobStatus.RUNNING, JobStatus.FAILED, JobStatus.FINISHED}
    ),
    JobStatus.SUBMITTED: frozenset(
        {JobStatus.RUNNING, JobStatus.KILLING, JobStatus.FINISHED, JobStatus.FAILED}
    ),
    JobStatus.RUNNING: frozenset(
        {JobStatus.KILLING, JobStatus.FINISHED, JobStatus.FAILED}
    ),
    JobStatus.KILLING: frozenset({JobStatus.FINISHED, JobStatus.FAILED}),
    # A terminal job only moves on when it is retried (back to QUEUED).
    JobStatus.FINISHED: frozenset({JobStatus.QUEUED}),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
}


def is_legal(old: JobStatus, new: JobStatus) -> bool:
    """Whether ``old -> new`` is a move the engine may make (same status: no-op)."""
    return old == new or new in _FORWARD[old]
