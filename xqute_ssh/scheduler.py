"""The abstract Scheduler: one place for wrapping, transitions and hooks.

A backend implements three coroutines: ``submit_job`` (start the wrapper,
return a job id), ``kill_job`` and ``job_is_running``.  Everything else, the
wrapper script, status transitions, plugin hooks, retries and halting, lives
here so that every backend behaves the same.

Frameworks subclass backends with mixins (``class MySsh(Mixin, SshScheduler)``),
override ``job_class`` and call ``await post_init()`` themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from . import attempt, fileio, staging
from .attempt import Action, AttemptRecord
from .errors import ConfigError, JobSubmissionError, WorkdirError, unknown_names
from .job import Job, normalize_envs
from .jobdirs import DirBatcher
from .outcome import FINAL_FAILURE, failure_line
from .path import SpecPath
from .plugin import plugin
from .status import KILLED_RC, JobErrorStrategy, JobStatus, is_legal
from .wakeup import PollWakeup
from .wrapper import WrapperSpec, render

logger = logging.getLogger("xqute_ssh")

#: What a job's wrapper is started with; subclasses may change the shell path.
DEFAULT_SHEBANG = "#!/usr/bin/env bash"
#: Statuses that hold a job slot (active, or QUEUED while being submitted).
_SLOT_HOLDING = frozenset(
    {JobStatus.QUEUED, JobStatus.SUBMITTED, JobStatus.RUNNING, JobStatus.KILLING}
)

#: How long a restarted controller looks for the job.pid of a job that the
#: dead one may have been starting (the wrapper writes it at once).
LAUNCH_WAIT = 3.0


def _dir_error(job: Job, exc: OSError) -> str:
    return (
        f"job {job.index}: cannot create its directory {str(job.metadir)!r}: "
        f"{exc.strerror or exc}; choose another workdir or fix its permissions"
    )


class Scheduler(ABC):
    """Run jobs somewhere and follow them to the end.

    Args:
        workdir: where job metadirs live, as the controller sees it.
        forks: how many jobs may be active at once.
        error_strategy: "ignore", "retry" or "halt".
        num_retries: how many times a failed job is retried ("retry").
        prescript: bash run before every command.
        postscript: bash run after every command.
        jobname_prefix: a prefix for job names (defaults to the scheduler name).
        submission_batch: how many submissions may be in flight at once.
        recheck_interval: every how many poll cycles to check that active jobs'
            processes are still alive (``job_fails_before_running``).
        cwd: the directory jobs run in (default: wherever the backend starts
            them: the controller's directory for local jobs, the login's home
            on SSH hosts).  A relative cwd is made absolute on the controller.
        timeout: seconds after which a job is killed (0: never); it then ends
            FAILED with rc 124.
        mounted_workdir: the workdir as the job's host sees it.
        poll_interval: seconds between poll cycles.
        kill_grace: seconds between TERM and KILL when a job is killed.
        resume: what to do with a job whose earlier attempt is found in the
            workdir (a controller died, or the same jobs are run again).
            True (default): an attempt that still runs is re-attached, one
            that ended is reported with its recorded outcome and not started
            again (a FAILED one may be retried under "retry", counting the
            attempt).  False: a fresh run; ended attempts run again (one that
            still runs is re-attached all the same, never doubled).
        kill_group_on_end: when a job ends, KILL whatever its process group
            still holds (background processes it left behind).  Off by
            default, like plain ``ssh host cmd``.
    """

    name: ClassVar[str] = "base"
    #: True when ``submit_job`` writes the job's attempt files itself (via
    #: ``Job.prepare_pending_sync``, in the thread hop of its own writes)
    #: instead of before it is called: one worker-thread hop per job fewer.
    defer_prepare: ClassVar[bool] = False
    #: Options a subclass takes out of ``**kwargs`` by name rather than by
    #: parameter (listed, with its parameters, when an option is unknown).
    extra_options: ClassVar[frozenset[str]] = frozenset()
    job_class: type[Job] = Job

    def __init__(
        self,
        workdir: str | SpecPath | Any,
        forks: int = 1,
        error_strategy: str | JobErrorStrategy = JobErrorStrategy.IGNORE,
        num_retries: int = 3,
        prescript: str = "",
        postscript: str = "",
        jobname_prefix: str | None = None,
        submission_batch: int | None = None,
        recheck_interval: int = 10,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float = 0,
        mounted_workdir: str | None = None,
        poll_interval: float = 0.1,
        kill_grace: float = 5.0,
        resume: bool = True,
        kill_group_on_end: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            known = _init_parameters(type(self))
            raise ConfigError(
                f"unknown option(s) for the {self.name} scheduler: "
                f"{unknown_names(kwargs, known)}; known: {', '.join(sorted(known))}"
            )
        if not isinstance(forks, int) or isinstance(forks, bool) or forks < 1:
            raise ConfigError(f"forks must be a whole number >= 1, got {forks!r}")
        if not isinstance(num_retries, int) or num_retries < 0:
            raise ConfigError(f"num_retries must be >= 0, got {num_retries!r}")
        if timeout is None or timeout < 0:
            raise ConfigError(
                f"timeout must be >= 0 seconds (0: none), got {timeout!r}"
            )
        if poll_interval <= 0:
            raise ConfigError(f"poll_interval must be > 0, got {poll_interval!r}")
        if submission_batch is not None and submission_batch < 1:
            raise ConfigError(
                f"submission_batch must be >= 1, got {submission_batch!r}"
            )
        self.workdir = SpecPath(workdir, mounted_workdir)
        self.forks = forks
        self.error_strategy = JobErrorStrategy.parse(error_strategy)
        self.num_retries = num_retries
        self.prescript = prescript or ""
        self.postscript = postscript or ""
        self.jobname_prefix = jobname_prefix or self.name
        # Submissions are mostly waiting (a thread hop, a round trip): allow
        # many at once so short jobs keep every slot busy.
        self.submission_batch = submission_batch or min(forks, 64)
        self.recheck_interval = max(1, int(recheck_interval))
        # Relative: to the controller's directory, as the user meant it (a
        # host would take it relative to its login's home).
        self.cwd: str | None = (
            os.path.abspath(os.path.expanduser(cwd)) if cwd else None
        )
        self.timeout = float(timeout)
        self.poll_interval = float(poll_interval)
        self.kill_grace = float(kill_grace)
        self.resume = bool(resume)
        self.kill_group_on_end = bool(kill_group_on_end)
        #: Set once a job failed for good under the "halt" strategy.
        self.halted = False
        #: Set by Xqute when the run stops (signal, halt, cancel): start no
        #: new job; a submission waiting for a host gives up.
        self.stopping = False
        #: Set by backends when something changed (a local job exited) so the
        #: poller looks now instead of at the next interval; ``hint(index)``
        #: when just one job ended (see wakeup.py).
        self.wakeup = PollWakeup()
        #: Set by Xqute: put a job back in the submission queue (retries).
        self.requeue: Callable[[Job], None] | None = None
        self._post_init_done = False
        #: Directories of jobs fed with no plugin watching, made in batches.
        self._dirs = DirBatcher()

    @property
    def subm_batch(self) -> int:
        """xqute's name for ``submission_batch``."""
        return self.submission_batch

    @subm_batch.setter
    def subm_batch(self, value: int) -> None:
        self.submission_batch = value

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} workdir={str(self.workdir)!r} forks={self.forks}>"
        )

    async def post_init(self) -> None:
        """Async set-up after construction (connections, checks); idempotent.

        Subclasses extend it and call ``await super().post_init()``.
        """
        return None

    async def shutdown(self) -> None:
        """Release what the backend holds (connections, watchers); idempotent.

        Backends extend it and call ``await super().shutdown()``.
        """
        return None

    # ----------------------------------------------------------------- jobs
    async def create_job(
        self,
        index: int,
        cmd: str | Sequence[Any],
        envs: Mapping[str, Any] | None = None,
    ) -> Job:
        """Create a job and its metadata directory.

        The command and envs are checked here; the command may be empty
        (frameworks such as pipen set ``job.cmd`` afterwards) but not once
        the job is submitted.  ``job_class`` is called with keywords, as
        xqute does, so a framework's Job subclass with xqute's signature
        works.  The scheduler's ``post_init`` runs before its first job.
        """
        job = await self._new_job(index, cmd, envs)
        try:
            job._fresh = await fileio.make_dir(job.metadir)
        except OSError as exc:
            raise WorkdirError(_dir_error(job, exc)) from exc
        return job

    async def _new_job(
        self, index: int, cmd: str | Sequence[Any], envs: Mapping[str, Any] | None
    ) -> Job:
        if not self._post_init_done:
            await self.post_init()
            self._post_init_done = True
        return self.job_class(
            index=index,
            cmd=cmd,
            workdir=self.workdir,
            error_retry=self.error_strategy == JobErrorStrategy.RETRY,
            num_retries=self.num_retries,
            envs=envs,
        )

    async def create_job_dir_soon(
        self,
        index: int,
        cmd: str | Sequence[Any],
        envs: Mapping[str, Any] | None = None,
    ) -> Job:
        """:meth:`create_job`, but the directory is made in the background
        (with the other jobs created before the loop turns: see jobdirs.py)
        and the job's submission waits for it.

        For ``Xqute.feed`` when no plugin looks at the job before then; not
        for frameworks, which may write into ``job.metadir`` right away.
        """
        job = await self._new_job(index, cmd, envs)
        self._dirs.add(job)
        return job

    async def _job_dir_made(self, job: Job) -> bool:
        """Wait for a directory :meth:`create_job_dir_soon` started; False
        (the job FAILED, the reason logged) if it could not be made."""
        pending = job._dir_pending
        if isinstance(pending, asyncio.Future):
            await asyncio.shield(pending)
            pending = job._dir_pending
        if isinstance(pending, OSError):
            job._dir_pending = None  # a retry tries again, with the job's files
            await self.transition_job_status(
                job, JobStatus.FAILED, rc=-1, error_msg=f"xqute: {_dir_error(job, pending)}"
            )
            return False
        return True

    # ------------------------------------------------------- wrapper script
    @property
    def jobcmd_wrapper_init(self) -> str:
        """Backend-specific lines right after the shebang (e.g. directives)."""
        return ""

    def jobcmd_shebang(self, job: Job) -> str:
        return DEFAULT_SHEBANG

    def jobcmd_init(self, job: Job) -> str:
        return _join(plugin.hooks.on_jobcmd_init(self, job))

    def jobcmd_prep(self, job: Job) -> str:
        return _join([self.prescript, *_list(plugin.hooks.on_jobcmd_prep(self, job))])

    def jobcmd_end(self, job: Job) -> str:
        return _join([*_list(plugin.hooks.on_jobcmd_end(self, job)), self.postscript])

    def wrapper_spec(self, job: Job) -> WrapperSpec:
        """The values the wrapper is rendered from; backends may adjust them."""
        return WrapperSpec(
            cmd=job.cmd,
            job_index=job.index,
            metadir=str(self.workdir.mounted),
            job_metadir=str(job.metadir.mounted),
            # str() again: a framework may have put an int in job.envs.
            envs=normalize_envs(job.envs),
            shebang=self.jobcmd_shebang(job),
            wrapper_init=self.jobcmd_wrapper_init,
            hook_init=self.jobcmd_init(job),
            hook_prep=self.jobcmd_prep(job),
            hook_end=self.jobcmd_end(job),
            timeout=self.timeout,
            kill_grace=self.kill_grace,
            kill_group_on_end=self.kill_group_on_end,
            # A job that stages files runs in its job directory.
            cwd=self.cwd
            or (str(job.metadir.mounted) if job.stage_in or job.stage_out else None),
        )

    def wrap_job_script(self, job: Job) -> str:
        """The wrapper script's text for a job."""
        return render(self.wrapper_spec(job))

    async def wrapped_job_script(self, job: Job) -> SpecPath:
        """Write the wrapper script to the job's metadir; return its path."""
        path = job.wrapped_script_file(self.name)
        await fileio.write_text(path, self.wrap_job_script(job), mode=0o700)
        return path

    # ----------------------------------------------------------- transitions
    async def transition_job_status(
        self,
        job: Job,
        new_status: JobStatus,
        rc: str | int | None = None,
        error_msg: str | None = None,
        is_killed: bool = False,
        *,
        persist: bool = False,
    ) -> None:
        """The one place where a job's status changes.

        Logs the change, fires the hooks (``on_job_started`` once per attempt
        before any end hook), writes rc and an error message when given, and
        decides retry or halt on a failure.  ``persist`` also writes
        job.status: only for statuses the controller decides (a kill, a
        submission failure, a lost process), never for ones read from the
        file the wrapper writes, which could be overtaken by a newer one.
        """
        new_status = JobStatus(new_status)
        old = job.status
        if old == new_status and not persist and rc is None and not error_msg:
            return
        if not is_legal(old, new_status):
            # Never silent: a dropped change means the engine and the job's
            # files disagree from here on.
            logger.warning(
                "job %s: ignoring the status change %s -> %s, which the job's "
                "life cycle does not allow",
                job.index, old.name, new_status.name,
            )
            return
        try:
            if error_msg:
                text = error_msg if error_msg.endswith("\n") else error_msg + "\n"
                await fileio.append_text(job.stderr_file, text)
            if rc is not None:
                await fileio.write_text(job.rc_file, f"{rc}\n")
            if persist:
                await fileio.write_text(job.status_file, f"{int(new_status)}\n")
        except OSError as exc:
            # A full or vanished disk must not stop the run: the job's status
            # still changes in memory and the other jobs go on.
            logger.error(
                "job %s: cannot record %s in %s: %s%s",
                job.index,
                new_status.name,
                job.metadir,
                exc.strerror or exc,
                f" ({error_msg.strip()})" if error_msg else "",
            )
        job._set_status_nofile(new_status)
        if old != new_status:
            # xqute's wording: log watchers written for xqute / pipen match it.
            logger.debug(
                "/Job-%s Status changed: %r -> %r", job.index, old.name, new_status.name
            )

        if new_status == JobStatus.QUEUED:
            job._started_hook_done = False
            await plugin.hooks.on_job_queued(self, job)
        elif new_status == JobStatus.SUBMITTED:
            await plugin.hooks.on_job_submitted(self, job)
        elif new_status == JobStatus.RUNNING:
            await self._fire_started(job)
        elif new_status == JobStatus.FINISHED:
            await self._fire_started(job)
            if is_killed:
                await plugin.hooks.on_job_killed(self, job)
            else:
                await plugin.hooks.on_job_succeeded(self, job)
        elif new_status == JobStatus.FAILED:
            await self._fire_started(job)
            if is_killed:
                await plugin.hooks.on_job_killed(self, job)
            elif self._should_retry(job):
                logger.warning(
                    "job %s failed (attempt %d of %d); it will be retried",
                    job.index,
                    job.trial_count + 1,
                    self.num_retries + 1,
                )
                job._retry_pending = True
            else:
                await self._fail_finally(job)

    async def _fail_finally(self, job: Job) -> None:
        """A failure that is final: hooks, then halt if the strategy says so."""
        # WARNING with the cause: a script's user must not have to dig.
        logger.warning(await failure_line(job, self.name), extra={FINAL_FAILURE: True})
        await plugin.hooks.on_job_failed(self, job)
        if self.error_strategy == JobErrorStrategy.HALT and not self.halted:
            logger.error(
                "Pipeline will halt: job %s failed and error_strategy is 'halt' "
                "(no new job starts; running jobs are killed)",
                job.index,
            )
            self.halted = True
            self.wakeup.set()

    async def _fire_started(self, job: Job) -> None:
        if not job._started_hook_done:
            job._started_hook_done = True
            await plugin.hooks.on_job_started(self, job)

    def _should_retry(self, job: Job) -> bool:
        if job.extra.get("fenced"):
            # Its attempt may still run on a host we cannot reach: a second
            # one elsewhere could run the job twice.
            logger.warning(
                "job %s is not retried: %s", job.index, job.extra["fenced"]
            )
            return False
        return (
            self.error_strategy == JobErrorStrategy.RETRY
            and job.trial_count < self.num_retries
            and not self.halted
        )

    # ------------------------------------------------------------ submission
    def pid_file(self, job: Job) -> SpecPath:
        """Where the wrapper writes "pid starttime" (as seen from here)."""
        return job.metadir / "job.pid"

    def launch_may_be_in_flight(self, job: Job, record: AttemptRecord) -> bool:
        """Whether a dead controller may have been starting this job."""
        return record.launch_pending

    async def job_is_submitted_or_running(self, job: Job) -> bool:
        """Whether an earlier attempt takes the place of a new submission.

        The rules are ``attempt.decide``'s: an attempt that still runs is
        re-attached (never started twice); one that ended is reported with
        its recorded outcome when ``resume`` (the attempt counts against
        ``num_retries``); another command's attempt is killed and replaced.
        A host that cannot be asked now: re-attach and let lost-job
        detection decide, rather than risk running the job twice.
        """
        if getattr(job, "_fresh", False):
            return False  # its directory is new: no earlier attempt exists
        record = await attempt.read_record(job, self.pid_file(job))
        action = attempt.decide(record, self.resume)
        if record.status is not None or record.jid:
            logger.debug("job %s: earlier attempt %s: %s", job.index, record, action.name)
        if self.resume and record.same_command is not False:
            # Earlier attempts count against num_retries, and a new failed
            # attempt is archived after them, never over them.
            job.trial_count = max(job.trial_count, record.trials)
        if action == Action.START:
            return False
        if action == Action.RECORDED:
            assert record.status is not None
            await self.recover_jid(job, record.jid)
            logger.info(
                "job %s: its attempt already ended (%s); not started again",
                job.index, record.status.name,
            )
            await self.transition_job_status(job, JobStatus.SUBMITTED)
            await self._apply_status(job, record.status)
            return True
        jid = await self._recover_started_jid(job, record)
        if not jid:
            logger.debug("job %s: no process of that attempt is known: started anew", job.index)
            return False
        try:
            alive = await self.job_is_running(job)
        except Exception as exc:
            if record.same_command is False:
                raise JobSubmissionError(
                    f"an attempt of another command (job id {jid}) may still run "
                    f"in {job.metadir} and its host cannot be asked now: {exc}"
                ) from exc
            logger.warning(
                "job %s: cannot check job id %s now (%s); re-attaching and "
                "watching it", job.index, jid, exc,
            )
            await self.transition_job_status(job, JobStatus.SUBMITTED)
            return True
        if alive and record.same_command is False:
            logger.warning(
                "job %s: an attempt of another command still runs in %s (job "
                "id %s): killing it before the new one starts",
                job.index, job.metadir, jid,
            )
            await self.kill_job(job)
            return False
        if alive:
            status = JobStatus.parse(await fileio.read_text(job.status_file) or "")
            if status is None or not status.is_active:
                status = JobStatus.SUBMITTED
            logger.info("job %s: re-attached to %s, still running", job.index, jid)
            await self.transition_job_status(job, JobStatus.SUBMITTED)
            if status != JobStatus.SUBMITTED:
                await self.transition_job_status(job, status)
            return True
        if not self.resume or record.same_command is False or record.killed:
            return False
        try:
            ended = await self.ended_unobserved(job)
        except Exception as exc:
            if record.status is None:
                return False  # see below
            logger.warning(
                "job %s: cannot read how job id %s ended (%s); re-attaching and "
                "watching it", job.index, jid, exc,
            )
            await self.transition_job_status(job, JobStatus.SUBMITTED)
            return True
        if ended is None and record.status is None:
            # A job id, no process, no status here and none where it ran: no
            # attempt of ours ran (each writes SUBMITTED before it starts); a
            # job.jid that a plugin wrote is not one.  (With no status here
            # but a final one on its host, the controller died while writing
            # the fetched end: that attempt is reported, not run again.)
            return False
        await self.transition_job_status(job, JobStatus.SUBMITTED)
        if ended is None:
            # Started, gone, no final status: that attempt ended too.
            await self.transition_job_status(job, JobStatus.RUNNING)
            await self.transition_job_status(
                job,
                JobStatus.FAILED,
                rc=-1,
                error_msg=f"xqute: the job's process (job id {jid}) is gone but "
                "it never wrote a final status (killed from outside, out of "
                "memory, or its host rebooted)",
                persist=True,
            )
            return True
        logger.info(
            "job %s: ended (%s) while no controller was watching; result kept",
            job.index, ended.name,
        )
        await self._apply_status(job, ended)
        return True

    async def _recover_started_jid(self, job: Job, record: AttemptRecord) -> str | None:
        """The attempt's complete job id; waits a little (LAUNCH_WAIT) for
        the wrapper's job.pid when a dead controller may have been starting
        the job right then."""
        deadline = time.monotonic() + LAUNCH_WAIT
        while True:
            jid = await self.recover_jid(job, record.jid)
            if jid and not jid.endswith(":"):
                return jid
            if (
                not self.launch_may_be_in_flight(job, record)
                or time.monotonic() >= deadline
            ):
                return None
            await asyncio.sleep(0.1)

    async def ended_unobserved(self, job: Job) -> JobStatus | None:
        """The final status of a started attempt that is no longer running,
        or None (it never wrote one).  Shared filesystem: job.status."""
        status = JobStatus.parse(await fileio.read_text(job.status_file) or "")
        return status if status is not None and status.is_terminal else None

    async def recover_jid(self, job: Job, jid: str | None) -> str | None:
        """The job id of an attempt an earlier controller started, if any.

        Backends complete a job id the controller had no time to write in
        full (it died between starting the job and recording its pid) from
        job.pid, which the wrapper writes as soon as it starts.
        """
        if jid and jid != job.jid:
            await job.set_jid(jid)
        return jid

    async def submit_job_and_update_status(self, job: Job) -> None:
        """Submit a job and record the outcome.

        Re-attaches instead if the job still runs from an earlier controller;
        lets ``on_job_submitting`` cancel; cleans the previous attempt's files;
        writes SUBMITTED *before* starting the job (the job writes RUNNING and
        its end itself, so the controller can never overwrite those); on a
        failure the job ends FAILED with the reason in job.stderr.
        """
        if job.status.is_active:
            raise JobSubmissionError(
                f"job {job.index} is already {job.status.name}: wait for it to "
                "end (or kill it) before submitting it again"
            )
        if job.status != JobStatus.QUEUED:
            # Straight from creation (not through Xqute.feed), or again after
            # it ended: it joins the life cycle here, so the engine tracks it
            # (and can kill it) like any other job.
            await self.transition_job_status(job, JobStatus.QUEUED)
        if not await self._job_dir_made(job):
            return
        if await self.job_is_submitted_or_running(job):
            return
        if self.halted:
            # error_strategy "halt" and a job failed: nothing new starts,
            # whoever drives the scheduler.
            await self.transition_job_status(
                job,
                JobStatus.FAILED,
                rc=-1,
                error_msg="xqute: not submitted: the run halted after a job failed",
                persist=True,
            )
            return
        if await plugin.hooks.on_job_submitting(self, job) is False:
            if job.status.is_active:
                # The plugin started the job itself: follow it from here.
                self.wakeup.set()
            elif not job.status.is_terminal:
                await self.transition_job_status(
                    job,
                    JobStatus.FAILED,
                    rc=-1,
                    error_msg="xqute: submission cancelled by a plugin",
                    persist=True,
                )
            return
        try:
            # clean, job.cmd, SUBMITTED on disk (or by the backend, just
            # before it starts the job: defer_prepare)
            await job.prepare_submission(defer=self.defer_prepare)
            jid = await self.submit_job(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not getattr(exc, "reported", False):  # said once already
                logger.error("job %s: submission failed: %s", job.index, exc)
            with contextlib.suppress(OSError):  # the failure is written next
                await job.prepare_pending()
            await self.transition_job_status(
                job,
                JobStatus.FAILED,
                rc=-1,
                error_msg=f"xqute: failed to submit the job: {exc}",
                persist=True,
            )
            return
        try:
            await job.set_jid(jid)
        except OSError as exc:
            # The job runs already: keep tracking it by the id held in memory.
            # Only a restarted controller loses the id (it then falls back on
            # job.pid, which the wrapper writes itself).
            logger.error(
                "job %s: started as %s but cannot record its job id in %s: %s",
                job.index, jid, job.metadir, exc.strerror or exc,
            )
        await self.transition_job_status(job, JobStatus.SUBMITTED)
        self.wakeup.set()
        if isinstance(self.wakeup, PollWakeup):  # a framework may set its own Event
            self.wakeup.submitted(job.index)

    async def retry_job(self, job: Job) -> None:
        """Archive the failed attempt in job.retry/<n> and submit it again.

        Under an Xqute the job goes back to its queue (``requeue``), so the
        poller never waits for a slot that only the poller can free.
        """
        job._retry_pending = False
        try:
            await job.clean(retry=True)
        except OSError as exc:
            # Retrying would overwrite the failed attempt's files, which
            # could not be set aside: keep them and let the failure stand.
            logger.error(
                "job %s: cannot archive the failed attempt in %s (%s); "
                "not retried, its files are kept as they are",
                job.index, job.retry_dir, exc.strerror or exc,
            )
            await self._fail_finally(job)
            return
        job.trial_count += 1
        await self.transition_job_status(job, JobStatus.QUEUED)
        if self.requeue is not None:
            self.requeue(job)
        else:
            await self.submit_job_and_update_status(job)

    # ------------------------------------------------------------------ kill
    async def kill_job_and_update_status(self, job: Job) -> None:
        """Kill a job (TERM, grace, KILL) and record it as killed."""
        old = job.status
        job._set_status_nofile(JobStatus.KILLING)
        if await plugin.hooks.on_job_killing(self, job) is False:
            # Left alone; keep a status the plugin set itself (it may have
            # stopped the job its own way and recorded the outcome).
            if job.status == JobStatus.KILLING:
                job._set_status_nofile(old)
            return
        error = None
        with contextlib.suppress(OSError):
            # A restarted controller runs a killed job again (resume).
            await fileio.write_text(job.metadir / attempt.KILLED_FILE, "")
        try:
            await self.kill_job(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = f"xqute: could not kill the job: {exc}"
            logger.error("job %s: %s", job.index, error)
        # The job may have finished by itself meanwhile; keep that.  Any other
        # end is recorded the same way, whichever way the kill went (the job
        # died of TERM: 143; trapped it and exited: its code; needed KILL: no
        # rc at all): FAILED with rc KILLED_RC, so run and status agree.
        written = JobStatus.parse(await fileio.read_text(job.status_file) or "")
        if written == JobStatus.FINISHED:  # it succeeded on its own
            with contextlib.suppress(OSError):
                await fileio.unlink(job.metadir / attempt.KILLED_FILE)
            await self.transition_job_status(job, written, is_killed=True)
        elif written is not None and written.is_terminal:
            await self.transition_job_status(
                job, written, rc=KILLED_RC, is_killed=True, persist=True
            )
        else:
            await self.transition_job_status(
                job,
                JobStatus.FAILED,
                rc=KILLED_RC,
                error_msg=error or "xqute: job killed",
                is_killed=True,
                persist=True,
            )

    async def kill_running_jobs(self, jobs: Sequence[Job]) -> None:
        """Kill every active job, concurrently, and wait for all of them."""
        targets = [j for j in jobs if j.status.is_active]
        if not targets:
            return
        logger.warning("killing %d running job(s)", len(targets))
        async with asyncio.TaskGroup() as tg:
            for job in targets:
                tg.create_task(self.kill_job_and_update_status(job))

    # --------------------------------------------------------------- polling
    async def count_running_jobs(self, jobs: Sequence[Job]) -> int:
        """How many of ``jobs`` hold a slot (queued or active).

        No I/O here (a coroutine as in xqute, so backends may override it
        with one); Xqute asks before each submission.
        """
        holding = _SLOT_HOLDING  # one set lookup per job: called per submission
        return sum(1 for j in jobs if j.status in holding)

    async def refresh_job_statuses(self, jobs: Sequence[Job]) -> list[JobStatus | None]:
        """What the status files of ``jobs`` say, read in one batch.

        Backends whose files live elsewhere (no shared filesystem) override
        this with one round trip per host.
        """
        texts = await fileio.read_many([j.status_file for j in jobs])
        return [JobStatus.parse(t) if t is not None else None for t in texts]

    async def check_all_done(self, jobs: Sequence[Job], polling_counter: int) -> bool:
        """One poll cycle over ``jobs``; True when none of them is left to run.

        Only active jobs are read.  Changes found are applied through
        ``transition_job_status`` (hooks fire there); pending retries are
        submitted; every ``recheck_interval`` cycles, active jobs whose
        process vanished without a final status are failed.
        """
        return await self._check(jobs, polling_counter, recheck=True)

    async def check_ended(self, jobs: Sequence[Job], polling_counter: int) -> None:
        """Read ``jobs`` now, between poll cycles: their wrappers said they
        ended (end events).  As a poll cycle, without the lost-job check."""
        await self._check(jobs, polling_counter, recheck=False)

    async def _check(self, jobs: Sequence[Job], polling_counter: int, *, recheck: bool) -> bool:
        active = [j for j in jobs if j.status.is_active]
        if active:
            statuses = await self.refresh_job_statuses(active)
            for job, status in zip(active, statuses, strict=True):
                await plugin.hooks.on_job_polling(self, job, polling_counter)
                # A job being killed is ended by the kill itself, once its
                # whole process group is gone, not by what its wrapper wrote.
                if job.status == JobStatus.KILLING:
                    continue
                if status is not None and status != job.status:
                    await self._apply_status(job, status)
            if recheck and polling_counter % self.recheck_interval == 0:
                await self._check_lost(
                    [
                        j
                        for j in active
                        if j.status in (JobStatus.SUBMITTED, JobStatus.RUNNING)
                    ]
                )
        for job in jobs:
            if job._retry_pending and not self.halted:
                await self.retry_job(job)
            elif job._retry_pending:  # halted meanwhile: the failure is final
                job._retry_pending = False
                await self._fail_finally(job)
        return all(j.status.is_terminal and not j._retry_pending for j in jobs)

    async def _apply_status(self, job: Job, status: JobStatus) -> None:
        """Move a job to what its status file says (never backwards)."""
        if status in (JobStatus.INIT, JobStatus.QUEUED):
            return
        if status.is_terminal and job.status == JobStatus.SUBMITTED:
            await self.transition_job_status(job, JobStatus.RUNNING)
        if status == JobStatus.FINISHED and job.stage_out:
            errors = await self.stage_job_out(job)
            if errors:
                await self.transition_job_status(
                    job,
                    JobStatus.FAILED,
                    error_msg="xqute: " + "; ".join(errors),
                    persist=True,
                )
                return
        await self.transition_job_status(job, status)

    async def stage_job_in(self, job: Job) -> None:
        """Copy the job's stage_in files into its directory (seen from here)."""
        if job.stage_in:
            await fileio.to_thread(staging.copy_in_local, job.stage_in, _local(job))

    async def stage_job_out(self, job: Job) -> list[str]:
        """Bring the job's stage_out paths to their targets; the errors."""
        return await fileio.to_thread(
            staging.copy_out_local, job.stage_out, _local(job)
        )

    async def _check_lost(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        lost_flags = await self.jobs_fail_before_running(jobs)
        lost = [j for j, is_lost in zip(jobs, lost_flags, strict=True) if is_lost]
        if not lost:
            return
        # The wrapper writes its end before it exits: read again now that we
        # know it is gone, so a job that just ended is not called lost.
        statuses = await self.refresh_job_statuses(lost)
        for job, status in zip(lost, statuses, strict=True):
            if status is not None and status.is_terminal:
                await self._apply_status(job, status)
                continue
            reason = job.extra.pop("lost_reason", None) or (
                "the job's process is gone but it never wrote a final status "
                "(killed from outside, out of memory, or its host rebooted)"
            )
            # A fenced job (its host unreachable, the attempt maybe alive)
            # keeps its files as they are: a later controller asks the host.
            fenced = bool(job.extra.get("fenced"))
            await self.transition_job_status(
                job,
                JobStatus.FAILED,
                rc=None if fenced else -1,
                error_msg=f"xqute: {reason}",
                persist=not fenced,
            )

    async def jobs_fail_before_running(self, jobs: Sequence[Job]) -> list[bool]:
        """For each active (SUBMITTED or RUNNING) job: is its process gone?

        The poller fails those that also wrote no final status (lost jobs).
        Backends override this with one round trip per host.
        """
        return [not await self.job_is_running(job) for job in jobs]

    async def job_fails_before_running(self, job: Job) -> bool:
        """Whether a submitted job died before it started its command.

        xqute's question: the job has a job id, its process is gone, and its
        status file never got to RUNNING.  False when there is no job id or
        the process still runs.  (Jobs lost later are found by the poller
        through ``jobs_fail_before_running``.)
        """
        if not await job.get_jid() or await self.job_is_running(job):
            return False
        status = JobStatus.parse(await fileio.read_text(job.status_file) or "")
        return status is None or status < JobStatus.RUNNING

    # ------------------------------------------------------------- backends
    @abstractmethod
    async def submit_job(self, job: Job) -> str | int:
        """Start the job's wrapper; return its job id once it has started
        (an int such as a pid is fine: it is kept as text)."""

    @abstractmethod
    async def kill_job(self, job: Job) -> None:
        """Kill the job and everything it started; return when it is gone."""

    @abstractmethod
    async def job_is_running(self, job: Job) -> bool:
        """Whether the job's process really runs (not just that a jid exists)."""


def _local(job: Job) -> Path:
    path = job.metadir.path
    if not isinstance(path, Path):
        raise ConfigError(f"staging files needs a local workdir, not {path}")
    return path


def _list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [v for v in value if v]


def _join(parts: Any) -> str:
    return "\n".join(p.rstrip("\n") for p in _list(parts) if p and p.strip())


def _init_parameters(cls: type) -> set[str]:
    """The keyword options a scheduler class takes: its ``__init__`` and its
    bases' (each passes what it does not know on with ``**kwargs``)."""
    names: set[str] = set(getattr(cls, "extra_options", ()))
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for param in inspect.signature(init).parameters.values():
            if param.name != "self" and param.kind in (
                param.POSITIONAL_OR_KEYWORD,
                param.KEYWORD_ONLY,
            ):
                names.add(param.name)
    return names
