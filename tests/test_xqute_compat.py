"""xqute 2.x API compatibility, on the real local scheduler.

Code written against xqute 2.2.1 runs here by switching an import; each test
pins one piece of that API (docs/coming-from.md lists what differs on
purpose).  The bug test at the top failed before the fix: a job handed
straight to ``submit_job_and_update_status`` stayed INIT in memory and
``kill_running_jobs`` left it running.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from simplug import NoSuchPlugin

from xqute_ssh import ConfigError, Job, JobStatus, LocalScheduler, Xqute, plugin
from xqute_ssh.errors import JobSubmissionError
from xqute_ssh.job import NO_RC
from xqute_ssh.path import SpecPath

from .helpers import assert_gone, pids_with, read, wait_until


async def run(xq: Xqute, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):  # hang guard only
        await xq.run_until_complete()


def marker_cmd(marker: str, seconds: int = 60) -> list[str]:
    return ["bash", "-c", f"exec -a {marker} sleep {seconds}"]


# ------------------------------------------------------------------ the bug
async def test_job_submitted_straight_from_init_is_tracked_and_killed(
    tmp_path: Path,
) -> None:
    marker = f"xq-direct-local-{os.getpid()}"
    sched = LocalScheduler(workdir=tmp_path, forks=2, kill_grace=1)
    job = Job(0, marker_cmd(marker), sched.workdir)  # never fed to an Xqute
    try:
        await sched.submit_job_and_update_status(job)
        assert job.status == JobStatus.SUBMITTED  # was: INIT for ever
        await wait_until(lambda: pids_with(marker) != [], what="the job to start")
        await sched.kill_running_jobs([job])
        assert job.status == JobStatus.FAILED
        await assert_gone(marker)  # was: left running, untracked
    finally:
        await sched.shutdown()


async def test_submitting_an_active_job_again_is_refused(tmp_path: Path) -> None:
    marker = f"xq-twice-{os.getpid()}"
    sched = LocalScheduler(workdir=tmp_path, kill_grace=1)
    job = await sched.create_job(0, marker_cmd(marker))
    try:
        await sched.submit_job_and_update_status(job)
        with pytest.raises(JobSubmissionError, match="already SUBMITTED"):
            await sched.submit_job_and_update_status(job)
        await sched.kill_running_jobs([job])
        await assert_gone(marker)
    finally:
        await sched.shutdown()


async def test_an_illegal_status_change_is_logged_as_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sched = LocalScheduler(workdir=tmp_path)
    job = await sched.create_job(0, ["true"])
    with caplog.at_level(logging.WARNING, logger="xqute_ssh"):
        await sched.transition_job_status(job, JobStatus.RUNNING)  # INIT -> RUNNING
    assert job.status == JobStatus.INIT
    assert "ignoring the status change INIT -> RUNNING" in caplog.text


# ------------------------------------------------------------- create_job
class XquteStyleJob(Job):
    """A framework's Job as pipen writes one: slots, xqute's keywords."""

    __slots__ = (*Job.__slots__, "proc")

    def __init__(
        self,
        index: int,
        cmd: Any,
        workdir: Any,
        error_retry: bool | None = None,
        num_retries: int | None = None,
        envs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            index, cmd, workdir, envs, error_retry=error_retry, num_retries=num_retries
        )
        self.proc = "a process"


class XquteStyleLocal(LocalScheduler):
    job_class = XquteStyleJob


async def test_create_job_builds_job_class_with_keywords_and_makes_its_metadir(
    tmp_path: Path,
) -> None:
    sched = XquteStyleLocal(workdir=tmp_path, error_strategy="retry", num_retries=2)
    job = await sched.create_job(3, ["echo", 1], envs={"N": 0})
    assert isinstance(job, XquteStyleJob) and job.proc == "a process"
    assert not hasattr(job, "__dict__")  # the slots really are slots
    assert (tmp_path / "3").is_dir()
    assert (job._error_retry, job._num_retries) == (True, 2)
    assert job.cmd == ["echo", "1"] and job.envs == {"N": "0"}


async def test_empty_command_at_creation_then_set_later_runs(tmp_path: Path) -> None:
    # pipen creates every job with cmd "" and sets job.cmd once it knows it.
    xq = Xqute(XquteStyleLocal, workdir=tmp_path)
    job = await xq.scheduler.create_job(0, "")
    job.cmd = ("bash", "-c", 'printf "%s" "$1"', "_", 7)
    await xq.feed(job)
    await run(xq)
    assert job.status == JobStatus.FINISHED
    assert read(job.stdout_file.path) == "7"


async def test_a_job_still_without_command_fails_at_submission_saying_why(
    tmp_path: Path,
) -> None:
    xq = Xqute(workdir=tmp_path)
    job = await xq.scheduler.create_job(0, [])
    await xq.feed(job)
    await run(xq)
    assert job.status == JobStatus.FAILED
    assert "the command is empty" in read(job.stderr_file.path)


async def test_feed_refuses_an_empty_command_at_once(tmp_path: Path) -> None:
    xq = Xqute(workdir=tmp_path)
    with pytest.raises(ConfigError, match="the command is empty"):
        await xq.feed("  ")
    assert xq.jobs == [] and not (tmp_path / "0").exists()


# --------------------------------------------------------- scheduler API
async def test_subm_batch_is_submission_batch(tmp_path: Path) -> None:
    sched = LocalScheduler(workdir=tmp_path, forks=4, submission_batch=3)
    assert sched.subm_batch == 3
    sched.subm_batch = 5
    assert sched.submission_batch == 5


async def test_count_running_jobs_is_awaited(tmp_path: Path) -> None:
    sched = LocalScheduler(workdir=tmp_path)
    jobs = [await sched.create_job(i, ["true"]) for i in range(4)]
    for job, status in zip(
        jobs,
        [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FINISHED, JobStatus.INIT],
        strict=True,
    ):
        await job.set_status(status, flush=False)
    assert await sched.count_running_jobs(jobs) == 2


async def test_cwd_may_be_a_path(tmp_path: Path) -> None:
    cwd = tmp_path / "here"
    cwd.mkdir()
    xq = Xqute(workdir=tmp_path / "wd", scheduler_opts={"cwd": cwd})
    job = await xq.feed(["pwd"])
    await run(xq)
    assert read(job.stdout_file.path) == f"{cwd}\n"


async def test_job_fails_before_running_means_what_xqute_means(tmp_path: Path) -> None:
    sched = LocalScheduler(workdir=tmp_path)
    job = await sched.create_job(0, ["true"])
    assert await sched.job_fails_before_running(job) is False  # no job id yet
    await job.set_jid("not-a-pid")
    assert await sched.job_fails_before_running(job) is False  # not ours to judge
    proc = await asyncio.create_subprocess_exec("true")
    await proc.wait()
    await job.set_jid(proc.pid)  # a process that is gone
    assert await sched.job_fails_before_running(job) is True  # no status at all
    await job.set_status(JobStatus.RUNNING)
    assert await sched.job_fails_before_running(job) is False  # it did start


# ------------------------------------------------------------------- Job API
async def test_rc_set_get_and_missing(tmp_path: Path) -> None:
    job = Job(0, ["true"], SpecPath(tmp_path))
    (tmp_path / "0").mkdir()
    assert await job.get_rc() == NO_RC == -9  # xqute's "no rc"
    assert await job.read_rc() is None
    await job.set_rc(5)
    assert await job.get_rc() == 5
    await job.set_rc("3")
    assert read(job.rc_file.path) == "3\n"
    with pytest.raises(ConfigError, match="whole number"):
        await job.set_rc("three")


async def test_set_status_flush_or_not(tmp_path: Path) -> None:
    job = Job(0, ["true"], SpecPath(tmp_path))
    (tmp_path / "0").mkdir()
    await job.set_status(JobStatus.FINISHED, flush=False)
    assert job.status == JobStatus.FINISHED
    assert not job.status_file.path.exists()
    await job.set_status(JobStatus.FAILED)
    assert read(job.status_file.path) == f"{int(JobStatus.FAILED)}\n"


async def test_job_paths_have_xqutes_async_file_methods(tmp_path: Path) -> None:
    job = Job(0, ["true"], SpecPath(tmp_path, mounted="/elsewhere"))
    await job.metadir.a_mkdir(parents=True, exist_ok=True)
    assert await job.metadir.a_is_dir()
    await job.jid_file.a_write_text("42")
    assert await job.jid_file.a_read_text() == "42"
    assert await job.jid_file.a_is_file() and await job.jid_file.a_exists()
    await job.jid_file.a_unlink()
    await job.jid_file.a_unlink(missing_ok=True)
    assert not await job.jid_file.a_exists()
    assert str(job.jid_file.mounted) == "/elsewhere/0/job.jid"


# ----------------------------------------------------------------- Xqute API
async def test_feed_a_prebuilt_job_adds_envs_as_text(tmp_path: Path) -> None:
    xq = Xqute(workdir=tmp_path)
    job = await xq.scheduler.create_job(0, 'echo "$A-$B"', envs={"A": "a", "B": "b"})
    assert await xq.feed(job, envs={"B": 0}) is job
    with pytest.raises(ConfigError, match="fed already or submitted"):
        await xq.feed(job)
    await run(xq)
    assert read(job.stdout_file.path) == "a-0\n"  # an int 0 is "0", never ''


async def test_env_values_put_in_job_envs_later_are_text_too(tmp_path: Path) -> None:
    xq = Xqute(workdir=tmp_path)
    job = await xq.feed('echo "[$PIPEN_JOB_INDEX]"')
    job.envs["PIPEN_JOB_INDEX"] = 0  # type: ignore[assignment]  # as a framework might
    await run(xq)
    assert read(job.stdout_file.path) == "[0]\n"


async def test_is_feeding_and_the_warning_when_dropped_while_feeding(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    xq = Xqute(workdir=tmp_path)
    assert not xq.is_feeding()
    await xq.run_until_complete(keep_feeding=True)
    assert xq.is_feeding()
    with caplog.at_level(logging.WARNING, logger="xqute_ssh"):
        xq.__del__()
    assert "stop_feeding()" in caplog.text
    await xq.feed(["true"])
    async with asyncio.timeout(30):
        await xq.stop_feeding()
    assert not xq.is_feeding()
    assert xq.jobs[0].status == JobStatus.FINISHED


class ShutdownRecorder:
    def __init__(self, answer: bool | None = None) -> None:
        self.name = f"shutdown-recorder-{id(self)}"
        self.answer = answer
        self.signals: list[signal.Signals | None] = []

    @plugin.impl
    async def on_shutdown(self, xqute: Xqute, sig: signal.Signals | None) -> bool | None:
        self.signals.append(sig)
        return self.answer


async def test_cancel_with_a_signal_kills_running_jobs(tmp_path: Path) -> None:
    marker = f"xq-cancel-{os.getpid()}"
    recorder = ShutdownRecorder()
    xq = Xqute(
        workdir=tmp_path, forks=2, plugins=[recorder], scheduler_opts={"kill_grace": 1}
    )
    job = await xq.feed(marker_cmd(marker))
    later = await xq.feed(["true"])
    xq.scheduler.forks = 1  # the second job waits for the first one's slot
    await xq.run_until_complete(keep_feeding=True)
    await wait_until(lambda: pids_with(marker) != [], what="the job to start")
    xq.cancel(signal.SIGTERM)
    async with asyncio.timeout(30):
        await xq.stop_feeding()
    assert job.status == JobStatus.FAILED
    assert later.status == JobStatus.QUEUED  # never started
    assert recorder.signals == [signal.SIGTERM]
    await assert_gone(marker)


class DeclineOnce:
    name = "decline-once"

    def __init__(self) -> None:
        self.declined = False

    @plugin.impl
    async def on_shutdown(self, xqute: Xqute, sig: signal.Signals | None) -> bool | None:
        if sig is not None and not self.declined:
            self.declined = True
            return False
        return None


async def test_one_plugin_declining_a_shutdown_is_heard_over_a_silent_one(
    tmp_path: Path,
) -> None:
    marker = f"xq-decline-{os.getpid()}"
    silent = ShutdownRecorder()  # answers None, and is asked first
    silent.priority = -10  # type: ignore[attr-defined]
    decliner = DeclineOnce()
    xq = Xqute(
        workdir=tmp_path, plugins=[silent, decliner], scheduler_opts={"kill_grace": 1}
    )
    job = await xq.feed(marker_cmd(marker))
    await xq.run_until_complete(keep_feeding=True)
    await wait_until(lambda: pids_with(marker) != [], what="the job to start")
    xq.cancel(signal.SIGTERM)
    await wait_until(lambda: decliner.declined, what="the plugin to decline")
    assert job.status.is_active and pids_with(marker) != []  # still running
    xq.cancel(signal.SIGINT)
    async with asyncio.timeout(30):
        await xq.stop_feeding()
    assert silent.signals == [signal.SIGTERM, signal.SIGINT]
    assert job.status == JobStatus.FAILED
    await assert_gone(marker)


async def test_cancel_before_the_run_runs_nothing(tmp_path: Path) -> None:
    xq = Xqute(workdir=tmp_path)
    job = await xq.feed(["true"])
    xq.cancel()
    await run(xq)
    assert job.status == JobStatus.QUEUED
    xq.cancel()  # after the end: nothing to do, no error


async def test_unknown_plugin_names_fail_at_construction() -> None:
    with pytest.raises(NoSuchPlugin):
        Xqute(plugins=["+no-such-plugin-xq"])
    Xqute(plugins=["-no-such-plugin-xq"])  # disabling an unknown one is fine


# ---------------------------------------------------------------- hook modes
class Silent:
    name = "silent"
    priority = -10  # asked first

    @plugin.impl
    async def on_job_submitting(scheduler: Any, job: Job) -> None:
        return None

    @plugin.impl
    async def on_job_killing(scheduler: Any, job: Job) -> None:
        return None


class Skipper:
    name = "skipper"

    @plugin.impl
    async def on_job_submitting(scheduler: Any, job: Job) -> bool | None:
        if job.index == 0:
            await job.set_status(JobStatus.FINISHED)  # e.g. a cached result
            return False
        return None


async def test_submitting_takes_the_first_answer_that_is_not_none(
    tmp_path: Path,
) -> None:
    xq = Xqute(workdir=tmp_path, plugins=[Silent, Skipper])
    skipped = await xq.feed(["bash", "-c", 'echo ran > "$1"', "_", tmp_path / "ran"])
    ran = await xq.feed(["true"])
    await run(xq)
    assert skipped.status == JobStatus.FINISHED and ran.status == JobStatus.FINISHED
    assert not (tmp_path / "ran").exists()
    assert ran.jid is not None and skipped.jid is None


class KeepAlive:
    name = "keep-alive"
    killed: list[int] = []

    @plugin.impl
    async def on_job_killing(scheduler: Any, job: Job) -> bool | None:
        # Stops the job its own way and records the outcome itself.
        await scheduler.kill_job(job)
        await job.set_status(JobStatus.FINISHED)
        return False

    @plugin.impl
    async def on_job_killed(scheduler: Any, job: Job) -> None:
        KeepAlive.killed.append(job.index)


async def test_killing_declined_keeps_the_status_the_plugin_set(tmp_path: Path) -> None:
    marker = f"xq-killing-{os.getpid()}"
    sched = LocalScheduler(workdir=tmp_path, kill_grace=1)
    job = await sched.create_job(0, marker_cmd(marker))
    try:
        with plugin.plugins_context([Silent, KeepAlive]):
            await sched.submit_job_and_update_status(job)
            await wait_until(lambda: pids_with(marker) != [], what="the job to start")
            await sched.kill_running_jobs([job])
        assert job.status == JobStatus.FINISHED
        assert KeepAlive.killed == []  # the engine did not kill it after all
        await assert_gone(marker)
    finally:
        await sched.shutdown()


class LeaveRunning:
    name = "leave-running"

    @plugin.impl
    async def on_job_killing(scheduler: Any, job: Job) -> bool:
        return False


async def test_killing_takes_the_first_answer_that_is_not_none(tmp_path: Path) -> None:
    marker = f"xq-leave-{os.getpid()}"
    sched = LocalScheduler(workdir=tmp_path, kill_grace=1)
    job = await sched.create_job(0, marker_cmd(marker))
    try:
        with plugin.plugins_context([Silent, LeaveRunning]):
            await sched.submit_job_and_update_status(job)
            await wait_until(lambda: pids_with(marker) != [], what="the job to start")
            await sched.kill_running_jobs([job])
        assert job.status.is_active and pids_with(marker) != []  # left alone
        await sched.kill_running_jobs([job])  # no plugin says no now
        assert job.status == JobStatus.FAILED
        await assert_gone(marker)
    finally:
        await sched.shutdown()


class SubmitsItself:
    name = "submits-itself"

    @plugin.impl
    async def on_job_submitting(scheduler: Any, job: Job) -> bool:
        await job.prepare_submission()
        await job.set_jid(await scheduler.submit_job(job))
        await job.set_status(JobStatus.SUBMITTED, flush=False)
        return False


async def test_a_job_a_plugin_submitted_itself_is_followed_to_its_end(
    tmp_path: Path,
) -> None:
    xq = Xqute(workdir=tmp_path, plugins=[SubmitsItself])
    job = await xq.feed(["bash", "-c", "exit 3"])
    await run(xq)
    assert job.status == JobStatus.FAILED and await job.get_rc() == 3


# --------------------------------------------------------------------- halt
async def test_a_halted_scheduler_starts_nothing_whoever_drives_it(
    tmp_path: Path,
) -> None:
    sched = LocalScheduler(workdir=tmp_path, error_strategy="halt")
    failing = await sched.create_job(0, ["false"])
    await sched.submit_job_and_update_status(failing)
    async with asyncio.timeout(30):
        while not await sched.check_all_done([failing], 1):
            await sched.wakeup.wait()
            sched.wakeup.clear()
    assert sched.halted
    late = await sched.create_job(1, ["bash", "-c", 'echo ran > "$1"', "_", tmp_path / "ran"])
    await sched.submit_job_and_update_status(late)
    assert late.status == JobStatus.FAILED
    assert "halted" in read(late.stderr_file.path)
    assert not (tmp_path / "ran").exists() and late.jid is None
    await sched.shutdown()


class BrokenWrapperLocal(LocalScheduler):
    def wrap_job_script(self, job: Job) -> str:
        return "no-such-command-xq-wrapper\n"


async def test_a_wrapper_that_dies_at_once_fails_the_job_saying_why(
    tmp_path: Path,
) -> None:
    # xqute's submit_job sleeps to catch this and raises; we never sleep and
    # the job fails with the reason instead (docs/coming-from.md).
    xq = Xqute(BrokenWrapperLocal, workdir=tmp_path)
    job = await xq.feed(["true"])
    await run(xq)
    assert job.status == JobStatus.FAILED
    err = read(job.stderr_file.path)
    assert "no-such-command-xq-wrapper" in err  # bash's own message
    # and ours: the wrapper exited (or, if a recheck saw it first, the
    # process is gone) without a final status
    assert "without writing a final status" in err or "never wrote a final status" in err


class WritesJid:
    name = "writes-jid"

    @plugin.impl
    async def on_job_init(scheduler: Any, job: Job) -> None:
        await job.jid_file.a_write_text("-1")  # as xqute's own test plugins do


async def test_a_job_id_a_plugin_wrote_before_submission_is_no_attempt(
    tmp_path: Path,
) -> None:
    xq = Xqute(workdir=tmp_path, plugins=[WritesJid])
    job = await xq.feed(["echo", "ran"])
    await run(xq)
    assert job.status == JobStatus.FINISHED and await job.get_rc() == 0
    assert read(job.stdout_file.path) == "ran\n"
