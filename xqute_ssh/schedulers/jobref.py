"""JobRef: what a remote backend needs from a job, whichever Job made it.

Several schedulers drive the same remote backends: ours (our Job) and
pipen's (xqute's Scheduler with pipen's Job, which has ``__slots__``).  The
SSH backend and the Slurm backend never see a Job class; they work on this
small description and keep whatever else they learn about a job themselves,
keyed by its index.  The helpers below write a job's end into its files the
way the wrapper does, for backends that bring the end home themselves.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import fileio, staging
from ..path import SpecPath
from ..status import JobStatus
from ..wrapper import render

if TYPE_CHECKING:  # pragma: no cover
    from ..job import Job
    from ..scheduler import Scheduler

#: Renders a job's wrapper for where it runs: (workdir, job directory) as
#: that host sees them, and the heartbeat interval (0: none) -> the text.
Renderer = Callable[[str, str, float], str]


@dataclass(frozen=True, eq=False)
class JobRef:
    """What a backend needs from a job.

    The job's files are the usual names in ``metadir`` (job.stdout,
    job.stderr, job.status, job.rc, job.jid, job.pid), as both xqute and
    xqute_ssh lay them out.
    """

    index: int
    workdir: SpecPath
    metadir: SpecPath
    render: Renderer
    script_name: str
    stage_in: Sequence[staging.StageIn] = ()
    stage_out: Sequence[staging.StageOut] = ()
    #: Writes the job's own files for this attempt (job.cmd, SUBMITTED),
    #: blocking; the backend runs it in the thread hop that writes the
    #: script, right before the launch (one hop per job instead of two).
    prepare: Callable[[], None] | None = None

    @property
    def script_file(self) -> SpecPath:
        return self.metadir / self.script_name

    @property
    def stdout_file(self) -> SpecPath:
        return self.metadir / "job.stdout"

    @property
    def stderr_file(self) -> SpecPath:
        return self.metadir / "job.stderr"

    @property
    def status_file(self) -> SpecPath:
        return self.metadir / "job.status"

    @property
    def rc_file(self) -> SpecPath:
        return self.metadir / "job.rc"

    @property
    def jid_file(self) -> SpecPath:
        return self.metadir / "job.jid"

    @property
    def pid_file(self) -> SpecPath:
        return self.metadir / "job.pid"


def ref_of(scheduler: Scheduler, job: Job) -> JobRef:
    """The JobRef of one of our jobs (ours, not pipen's: see the pipen
    schedulers for theirs), for the SSH and Slurm schedulers alike."""

    def render_for(workdir: str, job_dir: str, heartbeat: float) -> str:
        # Only at a launch: the spec asks the plugins for their code.
        spec = scheduler.wrapper_spec(job)
        remote_spec = dataclasses.replace(
            spec, metadir=workdir, job_metadir=job_dir, heartbeat=heartbeat
        )
        if spec.cwd == spec.job_metadir:  # staging jobs run in their job dir
            remote_spec.cwd = job_dir
        return render(remote_spec)

    return JobRef(
        index=job.index,
        workdir=scheduler.workdir,
        metadir=job.metadir,
        render=render_for,
        script_name=job.wrapped_script_file(scheduler.name).name,
        stage_in=job.stage_in,
        stage_out=job.stage_out,
        prepare=job.prepare_pending_sync,
    )


def write_outputs(ref: JobRef, stdout: bytes, stderr: bytes) -> None:
    """The job's fetched stdout and stderr into its local metadir (blocking)."""
    fileio.write_bytes_sync(ref.stdout_file, stdout)
    fileio.write_bytes_sync(ref.stderr_file, stderr)


def write_end(ref: JobRef, rc: str) -> bool:
    """Write job.rc and the final status locally (rc first, as the wrapper
    does, so a reader that sees the status finds the rc); False if ``rc``
    is not a number (blocking)."""
    try:
        code = int(rc)
    except ValueError:
        return False
    fileio.write_text_sync(ref.rc_file, f"{code}\n")
    status = JobStatus.FINISHED if code == 0 else JobStatus.FAILED
    fileio.write_text_sync(ref.status_file, f"{int(status)}\n")
    return True


def log_fetch_failure(index: int, where: str, exc: BaseException, said: str | None) -> str:
    """Log that an ended job's files could not be brought home from
    ``where``; returns what was said, to pass back as ``said`` next time.

    The fetch is tried again at every poll: say it once (WARNING), and again
    only when the error changes."""
    text = str(exc)
    logging.getLogger("xqute_ssh").log(
        logging.DEBUG if said == text else logging.WARNING,
        "job %s: it ended, but its files cannot be brought home from %s "
        "yet (tried again at each poll): %s",
        index, where, exc,
    )
    return text
