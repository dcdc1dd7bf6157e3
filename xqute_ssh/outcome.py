"""What a run came to: :class:`RunOutcome`, and the line a final failure logs.

``await xq.run_until_complete()`` returns a RunOutcome so a script can act on
failures without walking the workdir::

    outcome = await xq.run_until_complete()
    if not outcome.ok:
        print(outcome)              # 100 jobs: 97 finished, 3 failed (0 7 42) ...
        raise SystemExit(outcome.exit_code)

A job's failure that is final (no retry left) is logged at WARNING with the
job, its host, its rc and the last line of its stderr (:func:`failure_line`),
because "job 7 failed" alone sends the user digging through the workdir.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from signal import Signals
from typing import TYPE_CHECKING

from . import fileio
from .status import JobStatus

if TYPE_CHECKING:  # pragma: no cover
    from .job import Job

_TAIL_BYTES = 4096
#: log-record attribute marking a final-failure record (the CLI reports those itself)
FINAL_FAILURE = "xqute_final_failure"


def _last_line_sync(job: Job) -> str:
    """The last non-empty line of the job's stderr, or "" (blocking)."""
    path = fileio._p(job.stderr_file)
    try:
        if fileio.is_local(job.stderr_file):
            with open(path, "rb") as fh:
                fh.seek(0, 2)
                fh.seek(max(0, fh.tell() - _TAIL_BYTES))
                text = fh.read().decode("utf-8", "replace")
        else:
            text = fileio.read_text_sync(job.stderr_file) or ""
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


async def last_stderr_line(job: Job) -> str:
    """The last non-empty line of the job's stderr, read in a worker thread."""
    return await fileio.to_thread(_last_line_sync, job)


def job_host(job: Job, default: str) -> str:
    """The host of the job's last attempt as the scheduler recorded it."""
    host = job.extra.get("host")
    return str(host) if host else default


async def failure_line(job: Job, default_host: str) -> str:
    """``job 7 failed for good on host1 (rc 3): <last stderr line>``."""
    rc = await job.get_rc()
    tail = await last_stderr_line(job)
    text = f"job {job.index} failed for good on {job_host(job, default_host)} (rc {rc})"
    return f"{text}: {tail}" if tail else f"{text}; its stderr is empty ({job.stderr_file})"


@dataclass(frozen=True)
class RunOutcome:
    """How the jobs of a run ended; ``ok`` when every job finished.

    ``failed`` are jobs that ended FAILED (after their retries); ``not_run``
    never ended (a halt or a signal stopped the run first).  ``signal`` is
    the signal that stopped the run, if any.
    """

    jobs: Sequence[Job]
    finished: list[Job] = field(default_factory=list)
    failed: list[Job] = field(default_factory=list)
    not_run: list[Job] = field(default_factory=list)
    signal: Signals | None = None

    @classmethod
    def of(cls, jobs: Sequence[Job], sig: Signals | None = None) -> RunOutcome:
        out = cls(list(jobs), signal=sig)
        for job in jobs:
            if job.status == JobStatus.FINISHED:
                out.finished.append(job)
            elif job.status == JobStatus.FAILED:
                out.failed.append(job)
            else:
                out.not_run.append(job)
        return out

    @property
    def ok(self) -> bool:
        """Every job finished and no signal stopped the run."""
        return self.signal is None and len(self.finished) == len(self.jobs)

    @property
    def exit_code(self) -> int:
        """0 if ok, 128 + n after signal n, else 1 (as the CLI exits)."""
        if self.signal is not None:
            return 128 + int(self.signal)
        return 0 if self.ok else 1

    def __str__(self) -> str:
        noun = "job" if len(self.jobs) == 1 else "jobs"
        text = (
            f"{len(self.jobs)} {noun}: {len(self.finished)} finished, "
            f"{len(self.failed)} failed, {len(self.not_run)} not run"
        )
        if self.failed:
            shown = " ".join(str(j.index) for j in self.failed[:20])
            more = len(self.failed) - 20
            text += f" (failed: {shown}{f' ... +{more}' if more > 0 else ''})"
        if self.signal is not None:
            text = f"stopped by {self.signal.name}; {text}"
        return text

    def __repr__(self) -> str:
        return f"<RunOutcome {self}>"
