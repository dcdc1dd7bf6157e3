"""What a controller does with a job's earlier attempt found in the workdir.

A controller can die at any moment (SIGKILL, a reboot); the next one started
on the same workdir must neither lose a running job nor start again one that
already ran.  The job's files are the durable record of its last attempt:

* ``job.cmd``: which command the metadir belongs to;
* ``job.jid`` (``<server>:<pid>:<start>`` over SSH, a pid locally) and
  ``job.pid`` (written by the wrapper first thing): the attempt started;
  they are kept after the job ends, so an end a controller saw and one
  nobody saw look the same;
* ``job.status`` / ``job.rc``: how it ended;
* ``job.killed``: a controller killed it (Ctrl-C, halt), so its end is not
  the job's own outcome;
* ``job.retry/<n>/``: earlier attempts, which count against ``num_retries``.

``read_record`` gathers these in one worker-thread hop; ``decide`` turns a
record into an action without any I/O, so the rules are easy to test.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from . import fileio
from .job import Job
from .path import SpecPath
from .status import JobStatus

#: The marker a controller writes into a metadir before it kills the job.
KILLED_FILE = "job.killed"


class Action(enum.Enum):
    """What to do with a job before submitting it."""

    START = "start"  #: no attempt to reuse: start a new one
    CHECK = "check"  #: an attempt started: ask its host whether it still runs
    RECORDED = "recorded"  #: it ended: report its recorded outcome


@dataclass(frozen=True)
class AttemptRecord:
    """What the metadir says about the job's last attempt."""

    status: JobStatus | None
    same_command: bool | None  # None: no job.cmd (an older layout)
    jid: str | None
    has_pid: bool
    killed: bool
    trials: int  # archived attempts in job.retry/

    @property
    def started(self) -> bool:
        """The attempt got as far as a process (a submission that failed
        or was cancelled never did, and runs again)."""
        return self.has_pid or bool(self.jid and not self.jid.endswith(":"))

    @property
    def launch_pending(self) -> bool:
        """SUBMITTED but no process recorded: a launch may be in flight."""
        return self.status == JobStatus.SUBMITTED and not self.started


def decide(record: AttemptRecord, resume: bool) -> Action:
    """The rules (documented in docs/reliability.md).

    * An attempt with a final status has ended.  ``resume`` (the default):
      reported as it ended if it is this command's and ended on its own (not
      killed by a controller); otherwise, and in a fresh run, a new attempt.
    * An attempt that may still run is checked on its host: re-attached if
      it runs (another command's is killed first), never doubled.
    """
    ended = record.status is not None and record.status.is_terminal
    if ended:
        # A final status is the wrapper's last act (or written once the
        # process was gone): nothing of that attempt runs any more.
        if resume and record.started and not record.killed and record.same_command is not False:
            return Action.RECORDED
        return Action.START
    if record.started or record.launch_pending:
        return Action.CHECK
    return Action.START


def _trials(retry_dir: SpecPath) -> int:
    try:
        return sum(1 for p in retry_dir.path.iterdir() if p.name.isdigit())
    except (OSError, NotImplementedError):
        return 0


def _command(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def read_record_sync(job: Job, pid_file: SpecPath) -> AttemptRecord:
    """Read the record (blocking: run it in a worker thread).

    A metadir that does not exist yet (a new run: the common case) costs one
    check, not six reads."""
    try:
        if not job.metadir.path.exists():
            return AttemptRecord(None, None, None, False, False, 0)
    except OSError:
        pass
    status_text, cmd_text, jid_text, pid_text, killed = (
        fileio.read_text_sync(p)
        for p in (
            job.status_file,
            job.cmd_file,
            job.jid_file,
            pid_file,
            job.metadir / KILLED_FILE,
        )
    )
    cmd = _command(cmd_text)
    return AttemptRecord(
        status=JobStatus.parse(status_text or ""),
        same_command=None if cmd is None else cmd == job.cmd,
        jid=(jid_text or "").strip() or None,
        has_pid=bool(pid_text and pid_text.split()),
        killed=killed is not None,
        trials=_trials(job.retry_dir),
    )


async def read_record(job: Job, pid_file: SpecPath) -> AttemptRecord:
    return await fileio.small(fileio.is_local(job.metadir), read_record_sync, job, pid_file)
