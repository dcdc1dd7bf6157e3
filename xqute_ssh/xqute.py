"""Xqute: the orchestrator that feeds jobs to a scheduler and sees them end.

Three kinds of task run inside one ``asyncio.TaskGroup`` for the duration of
``run_until_complete``:

* consumers take queued jobs and submit them while a slot is free
  (``forks``), at most ``submission_batch`` submissions at once;
* the poller applies what the jobs' status files say, retries, halts;
* signal handlers (installed for the run only) turn SIGINT/SIGTERM into an
  orderly stop: no new submissions, running jobs killed, ``on_shutdown``.
  A second signal abandons the run at once (``KeyboardInterrupt``; jobs
  may be left running).

A stop (signal, halt, or cancelling the run) gives submissions in flight
``SUBMIT_STOP_GRACE`` seconds to end, then cancels them: one waiting for a
host or a connection gives up; a scheduler whose launch had already started
records the job's id first, so the kill that follows reaches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, overload

from . import fileio, staging
from .errors import ConfigError, WorkdirError
from .job import Job, normalize_cmd, normalize_envs
from .outcome import RunOutcome
from .path import SpecPath
from .plugin import load_entrypoint_plugins, plugin
from .scheduler import Scheduler
from .schedulers import get_scheduler
from .staging import StageSpec
from .status import JobErrorStrategy, JobStatus
from .wakeup import PollWakeup

logger = logging.getLogger("xqute_ssh")

#: On a stop, how long submissions in flight may finish before they are cancelled.
SUBMIT_STOP_GRACE = 1.0
#: On a stop caused by cancelling the run, the bound on killing what runs.
CANCEL_KILL_WAIT = 30.0


class Xqute:
    """Run many jobs through one scheduler.

    Args:
        scheduler: a name ("local", "ssh", or one registered under the entry
            point group ``xqute_ssh.schedulers``) or a Scheduler subclass.
        plugins: plugin objects or names enabled for this run only (simplug
            ``plugins_context`` semantics: bare names mean "only these").
        workdir: where each job's metadata directory is kept.
        submission_batch: how many submissions may be in flight at once.
        error_strategy: "ignore", "retry" or "halt".
        num_retries: retries per job under "retry".
        forks: how many jobs may run at once.
        scheduler_opts: more options for the scheduler (e.g. ``timeout``,
            ``servers``).
        jobname_prefix: a prefix for job names.
    """

    def __init__(
        self,
        scheduler: str | type[Scheduler] = "local",
        *,
        plugins: Sequence[Any] | None = None,
        workdir: str | os.PathLike[str] | SpecPath | Any = "./.xqute",
        submission_batch: int | None = None,
        error_strategy: str | JobErrorStrategy = "ignore",
        num_retries: int = 3,
        forks: int = 1,
        scheduler_opts: Mapping[str, Any] | None = None,
        jobname_prefix: str | None = None,
    ) -> None:
        load_entrypoint_plugins()
        self._plugins = list(plugins) if plugins is not None else None
        # Unknown plugin names fail here, not when the run starts (entering
        # and leaving the context changes nothing).
        with plugin.plugins_context(self._plugins):
            pass
        #: Whether a plugin object passed here implements a hook of feed().
        self._feed_hook_objects = _implement(self._plugins or (), FEED_HOOKS)
        scheduler_cls = get_scheduler(scheduler)
        opts = dict(scheduler_opts or {})
        self.scheduler: Scheduler = scheduler_cls(
            workdir=workdir,
            forks=forks,
            error_strategy=error_strategy,
            num_retries=num_retries,
            submission_batch=submission_batch,
            jobname_prefix=jobname_prefix,
            **opts,
        )
        self.scheduler.requeue = self._requeue
        self.jobs: list[Job] = []
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._active: list[Job] = []  # jobs taken from the queue, not yet ended
        self._slot_changed = asyncio.Event()
        self._submit_tasks: set[asyncio.Task[None]] = set()
        self._feeding = True
        self._keep_feeding = False
        self._stopping = False
        self._cancel_requested = False
        self._slot_lock = asyncio.Lock()
        self._workdir_ready = False
        self._run_task: asyncio.Task[None] | None = None
        self._signal: signal.Signals | None = None
        self._forced: signal.Signals | None = None
        self._signalled = False
        self._signalled_event = asyncio.Event()
        self._installed: list[signal.Signals] = []
        self._done = asyncio.Event()
        self._polling_counter = 0
        self._n_ended = 0
        self._in_plugin_ctx = False
        #: the signal that stopped the run (SIGINT, SIGTERM), if one did
        self.stopped_by: signal.Signals | None = None

    def __repr__(self) -> str:
        return (
            f"<Xqute {self.scheduler.name} jobs={len(self.jobs)} "
            f"active={len(self._active)} queued={self._queue.qsize()}>"
        )

    # ----------------------------------------------------------------- feed
    async def _ensure_workdir(self) -> None:
        if self._workdir_ready:
            return
        workdir = self.scheduler.workdir
        try:
            await fileio.mkdir(workdir)
            probe = workdir / f".xqute-write-test-{os.getpid()}"
            await fileio.write_text(probe, "ok\n")
            await fileio.unlink(probe)
        except OSError as exc:
            raise WorkdirError(
                f"the workdir {str(workdir)!r} cannot be created or written: "
                f"{exc.strerror or exc}; choose another workdir or fix its permissions"
            ) from exc
        self._workdir_ready = True

    async def feed(
        self,
        cmd: str | Sequence[Any] | Job,
        envs: Mapping[str, Any] | None = None,
        *,
        stage_in: StageSpec | None = None,
        stage_out: StageSpec | None = None,
    ) -> Job:
        """Queue one job; its command, envs and staged files are checked now.

        ``cmd`` is an argv (list: each item reaches the program byte for
        byte), shell code (str, run by bash), or a Job made with
        ``scheduler.create_job`` (``envs`` are then added to its own).
        ``stage_in`` (local paths, or ``{local: dest}``) are copied into the
        job's directory before it runs; ``stage_out`` (paths relative to the
        job's directory, or ``{path: local_dest}``) come back after it
        succeeded.  Jobs that stage run in their job directory.

        The job's directory (``job.metadir``) exists when ``on_job_init``
        runs; when no plugin implements ``on_job_init`` or ``on_job_queued``
        it is made in the background instead (jobs fed in a row share one
        worker-thread trip) and is there before the job is submitted.  One
        that cannot be made fails that job, with the reason, not the run.
        """
        if not self._feeding:
            raise ConfigError("feeding has stopped; start a new Xqute for more jobs")
        if (stage_in or stage_out) and self.scheduler.workdir.is_cloud:
            raise ConfigError(
                "stage_in / stage_out need a workdir on a filesystem, not "
                f"{self.scheduler.workdir}; stage through the cloud storage instead"
            )
        if isinstance(cmd, Job):
            job = cmd
            if job.status != JobStatus.INIT:  # fed already, or submitted
                raise ConfigError(
                    f"job {job.index} is {job.status.name}, not new: it was "
                    "fed already or submitted; feed only new jobs"
                )
            job.envs.update(normalize_envs(envs))
        else:
            # Checked before anything is made: a clear error, no metadir.
            normalize_cmd(cmd)
            normalize_envs(envs)
        staged_in = (
            await asyncio.to_thread(staging.parse_stage_in, stage_in)
            if stage_in
            else []
        )
        staged_out = staging.parse_stage_out(stage_out)
        await self._ensure_workdir()
        hooked = self._feed_hooked()
        if not isinstance(cmd, Job):
            if not hooked and _own(self.scheduler, "create_job"):
                # No plugin looks at the job before its submission: its
                # directory is made in the background, one hop for many feeds.
                job = await self.scheduler.create_job_dir_soon(len(self.jobs), cmd, envs)
            else:
                job = await self.scheduler.create_job(len(self.jobs), cmd, envs)
        job.stage_in, job.stage_out = staged_in, staged_out
        self.jobs.append(job)
        with self._plugin_ctx() if hooked else contextlib.nullcontext():
            await plugin.hooks.on_job_init(self.scheduler, job)
            await self.scheduler.transition_job_status(job, JobStatus.QUEUED)
        self._queue.put_nowait(job)
        return job

    def _feed_hooked(self) -> bool:
        """Whether any plugin, passed to this Xqute or registered, implements
        a hook feed() runs.

        If none does, feed() skips simplug's plugin context (entering it
        registers each plugin object again and copies the registry: ~0.2 ms
        per job fed before the run; a hook nobody implements does nothing
        with the context or without it) and makes the job's directory in the
        background (no plugin can look into it before the submission).
        """
        return self._feed_hook_objects or _implement(_registered(), FEED_HOOKS)

    def is_feeding(self) -> bool:
        """True while a run started with ``keep_feeding`` waits for
        ``stop_feeding()``."""
        return self._keep_feeding and self._feeding and self._run_task is not None

    def cancel(self, sig: signal.Signals | None = None) -> None:
        """Stop the run: nothing new starts, running jobs are killed.

        Safe to call from a callback (not a coroutine) and before or after
        the run; ``on_shutdown`` gets ``sig`` and may decline (returning
        False), as on SIGINT / SIGTERM, which call this.
        """
        if sig is not None:
            logger.warning(
                "Got signal %r: stopping (no new jobs; running jobs are killed)",
                sig.name,
            )
        else:
            logger.warning("cancelled: stopping (no new jobs; running jobs are killed)")
        self._request_stop(sig)

    def _request_stop(self, sig: signal.Signals | None) -> None:
        self._cancel_requested = True
        self._signal = sig
        self._signalled = True
        self._signalled_event.set()
        self.scheduler.stopping = True
        self.scheduler.wakeup.set()
        self._slot_changed.set()

    def __del__(self) -> None:
        # A run left waiting for more jobs would never end; say so.
        try:
            if self.is_feeding():
                logger.warning(
                    "an Xqute is being deleted while its run still waits for jobs "
                    "(run_until_complete(keep_feeding=True) with no stop_feeding()). "
                    "Did you forget to call 'await xqute.stop_feeding()'?"
                )
        except Exception:  # interpreter shutdown: nothing to tell
            pass

    # ------------------------------------------------------------------ run
    @overload
    async def run_until_complete(self, keep_feeding: Literal[False] = False) -> RunOutcome: ...

    @overload
    async def run_until_complete(self, keep_feeding: Literal[True]) -> None: ...

    @overload
    async def run_until_complete(self, keep_feeding: bool) -> RunOutcome | None: ...

    async def run_until_complete(self, keep_feeding: bool = False) -> RunOutcome | None:
        """Run until every fed job has ended (or the run halts / is stopped).

        Returns how the jobs ended (:class:`RunOutcome`: ``ok``, ``failed``,
        ``exit_code``), so a script can exit non-zero when some failed.  With
        ``keep_feeding`` the run starts in the background and this returns
        None at once: feed more, then ``await stop_feeding()``, which returns
        the outcome.
        """
        if self._run_task is not None:
            raise RuntimeError("this Xqute is already running")
        if keep_feeding:
            self._keep_feeding = True
            self._run_task = asyncio.create_task(self._run())
            return None
        self._feeding = False
        self._run_task = asyncio.create_task(self._run())
        await self._wait_run()
        return self.outcome()

    async def stop_feeding(self) -> RunOutcome:
        """Say that no more jobs come, wait for the run to complete, return how it went."""
        self._feeding = False
        self.scheduler.wakeup.set()
        if self._run_task is None:
            return await self.run_until_complete()
        await self._wait_run()
        return self.outcome()

    def outcome(self) -> RunOutcome:
        """How the fed jobs stand now (final once the run has completed)."""
        return RunOutcome.of(self.jobs, self.stopped_by)

    async def _wait_run(self) -> None:
        assert self._run_task is not None
        try:
            await self._run_task
        except asyncio.CancelledError:
            if self._forced is not None and self._run_task.cancelled():
                task = asyncio.current_task()
                if task is None or not task.cancelling():
                    raise KeyboardInterrupt from None
            raise

    def _plugin_ctx(self) -> contextlib.AbstractContextManager[Any]:
        """This run's plugins; entered once (simplug contexts do not nest)."""
        if self._in_plugin_ctx:
            return contextlib.nullcontext()
        return _FlagContext(self, plugin.plugins_context(self._plugins))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        installed = self._installed
        with self._plugin_ctx():
            await self._ensure_workdir()
            await self.scheduler.post_init()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass  # not the main thread: the caller handles signals
            try:
                await plugin.hooks.on_init(self)
                while True:
                    if not self._cancel_requested:
                        await self._run_once()
                    if not self._cancel_requested:
                        await plugin.hooks.on_shutdown(self, None)
                        break
                    got, self._signal = self._signal, None
                    self._cancel_requested = False
                    if await plugin.hooks.on_shutdown(self, got) is not False:
                        self.stopped_by = got
                        await self._stop_everything()
                        break
                    logger.warning(
                        "a plugin declined to shut down on %s",
                        got.name if got is not None else "cancel()",
                    )
                    self._signalled = self.scheduler.stopping = False
                    self._signalled_event.clear()
            except asyncio.CancelledError:
                if self._forced is None:
                    # Cancelled by the caller: stop as for a signal, bounded.
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        async with asyncio.timeout(CANCEL_KILL_WAIT):
                            await self._stop_everything()
                raise
            finally:
                self._remove_signal_handlers()
                await self.scheduler.shutdown()
                self._done.set()

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        while self._installed:
            loop.remove_signal_handler(self._installed.pop())

    async def _run_once(self) -> None:
        n_consumers = self.scheduler.submission_batch
        async with asyncio.TaskGroup() as tg:
            consumers = [tg.create_task(self._consumer()) for _ in range(n_consumers)]
            await self._poller()
            for task in consumers:
                task.cancel()
        if self.scheduler.halted:
            await self._stop_everything()

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._signalled:
            # A second signal: the user will not wait for the kills.  Later
            # ones get Python's default handling.
            logger.warning(
                "received %s again: exiting now; jobs may be left running", sig.name
            )
            self._forced = sig
            self._remove_signal_handlers()
            if self._run_task is not None:
                self._run_task.cancel()
            return
        logger.warning(
            "received %s: stopping (killing running jobs; %s again to exit at once)",
            sig.name,
            sig.name,
        )
        self._request_stop(sig)

    async def _stop_everything(self) -> None:
        """No more submissions; end the in-flight ones; kill what runs."""
        self._stopping = True
        self.scheduler.stopping = True
        if self._submit_tasks:
            pending = set(self._submit_tasks)
            _, late = await asyncio.wait(pending, timeout=SUBMIT_STOP_GRACE)
            for task in late:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.scheduler.kill_running_jobs(self._active)

    def _requeue(self, job: Job) -> None:
        """A retried job gives its slot back and waits in the queue again."""
        if job in self._active:
            self._active.remove(job)
            self._slot_changed.set()
        self._queue.put_nowait(job)

    # ------------------------------------------------------------ consumers
    def _stop_submitting(self) -> bool:
        return self._stopping or self._cancel_requested or self.scheduler.halted

    async def _take_slot(self, job: Job) -> bool:
        """Wait for a free slot and take it for ``job``; False if stopping.

        One consumer at a time: the count and the taking must not be split
        by another consumer's (a backend's count may do I/O).
        """
        async with self._slot_lock:
            while True:
                if self._stop_submitting():
                    return False
                # Fewer jobs held than forks: free without counting (a job
                # in _active holds at most one slot).
                if len(self._active) < self.scheduler.forks or (
                    await self.scheduler.count_running_jobs(self._active)
                    < self.scheduler.forks
                ):
                    self._active.append(job)
                    return True
                self._slot_changed.clear()
                await self._slot_changed.wait()

    async def _consumer(self) -> None:
        while True:
            job = await self._queue.get()
            if not await self._take_slot(job):
                self._queue.put_nowait(job)
                return
            # Shielded: a started submission always runs to its end.
            task = asyncio.create_task(self._submit(job))
            self._submit_tasks.add(task)
            task.add_done_callback(self._submit_tasks.discard)
            await asyncio.shield(task)

    async def _submit(self, job: Job) -> None:
        await self.scheduler.submit_job_and_update_status(job)

    # --------------------------------------------------------------- poller
    async def _unless_stopped(self, task: asyncio.Future[Any]) -> bool:
        """Await ``task``; if a stop (signal, cancel) comes first, cancel it
        and return False."""
        if not self._cancel_requested:
            stop = asyncio.ensure_future(self._signalled_event.wait())
            try:
                await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
        if not task.done():
            task.cancel()
            # asyncio.wait, not ``await task`` under suppress(CancelledError):
            # that also swallowed a cancellation of *this* task (a second
            # Ctrl-C landing while the cycle cleaned up), and the forced exit
            # became a full stop waiting the kill grace.
            await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # retrieved: the stop makes it moot
            return False
        task.result()  # its exception, if any
        return True

    def _finished(self) -> bool:
        # Every fed job has ended; a job a consumer holds while it waits for a
        # slot is in neither the queue nor _active, so count ends instead.
        return not self._feeding and self._n_ended == len(self.jobs)

    async def _poller(self) -> None:
        sched = self.scheduler
        wake = sched.wakeup
        loop = asyncio.get_running_loop()
        while True:
            self._polling_counter += 1
            if self._active:
                # Jobs still QUEUED here are being submitted: not polled yet.
                check = asyncio.ensure_future(
                    sched.check_all_done(
                        [j for j in self._active if j.status != JobStatus.QUEUED],
                        self._polling_counter,
                    )
                )
                if not await self._unless_stopped(check):
                    return  # a signal: a check waiting on a dead host is abandoned
                self._drop_ended()
            if self._cancel_requested or sched.halted or self._finished():
                return
            # A full request made during the cycle is served by the next one,
            # an interval on (under load submissions ask all the time).
            wake.clear()
            deadline = loop.time() + sched.poll_interval
            if not isinstance(wake, PollWakeup):  # a framework's own Event
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(sched.poll_interval):
                        await wake.wait()
                continue
            while not wake.full:
                hinted = wake.take_hints()
                if hinted:
                    # End events: read just those jobs now (a poll cycle
                    # would read every running job's files again).
                    jobs = []
                    for j in self._active:
                        if j.index not in hinted:
                            continue
                        if j.status.is_active:
                            jobs.append(j)
                        elif j.status == JobStatus.QUEUED:
                            # Ended before its submission returned: read it
                            # once it is SUBMITTED (see wakeup.py).
                            wake.park(j.index)
                    if jobs:
                        quick = asyncio.ensure_future(
                            sched.check_ended(jobs, self._polling_counter)
                        )
                        if not await self._unless_stopped(quick):
                            return
                        self._drop_ended()
                        if self._cancel_requested or sched.halted or self._finished():
                            return
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await wake.wait()

    def _drop_ended(self) -> None:
        """Forget the jobs that ended for good; free their slots."""
        before = len(self._active)
        self._active = [
            j for j in self._active if not (j.status.is_terminal and not j._retry_pending)
        ]
        if len(self._active) != before:
            self._n_ended += before - len(self._active)
            self._slot_changed.set()


#: The hooks feed() runs: on_job_init, and on_job_queued (QUEUED transition).
FEED_HOOKS = ("on_job_init", "on_job_queued")


def _implement(plugins: Iterable[Any], hooks: Sequence[str]) -> bool:
    """Whether any plugin object (not a name) has an attribute named after
    one of ``hooks`` (decorated or not: a near miss counts, to be safe)."""
    return any(
        not isinstance(p, str) and any(hasattr(p, h) for h in hooks) for p in plugins
    )


def _own(scheduler: Scheduler, name: str) -> bool:
    """Whether ``scheduler`` uses our ``name`` method, not a subclass's."""
    return getattr(type(scheduler), name) is getattr(Scheduler, name)


def _registered() -> Iterable[Any]:
    """The registered plugin objects.  simplug's public listing builds a
    new mapping per call (~20 us, as much as the rest of the check), so its
    registry is read directly when it is where simplug 0.4/0.5 keep it."""
    registry = getattr(plugin.hooks, "_registry", None)
    if registry is None:
        return plugin.get_all_plugins(raw=True).values()
    return [wrapper.plugin for wrapper in dict.values(registry)]


class _FlagContext(contextlib.AbstractContextManager[Any]):
    """Enter a plugin context and mark the Xqute as inside it."""

    def __init__(
        self, xq: Xqute, inner: contextlib.AbstractContextManager[Any]
    ) -> None:
        self._xq = xq
        self._inner = inner

    def __enter__(self) -> None:
        self._inner.__enter__()
        self._xq._in_plugin_ctx = True

    def __exit__(self, *exc: Any) -> None:
        self._xq._in_plugin_ctx = False
        self._inner.__exit__(*exc)
