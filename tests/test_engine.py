"""The core engine through the local scheduler: what users rely on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest

from xqute_ssh import (
    ConfigError,
    Job,
    JobStatus,
    LocalScheduler,
    Scheduler,
    WorkdirError,
    Xqute,
    get_scheduler,
    plugin,
)
from xqute_ssh.status import KILLED_RC

from .helpers import assert_gone, pids_with, read

AWKWARD = [
    "plain",
    "with space",
    "single'quote",
    'double"quote',
    "$HOME",
    "`echo backtick`",
    "$(echo subst)",
    "a;b|c&d",
    "back\\slash",
    "non-ascii: é ü 漢字",
    "",
    "new\nline",
    "*",
    "-n",
]


async def run(xq: Xqute, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):  # hang guard only
        await xq.run_until_complete()


async def test_arguments_and_envs_reach_the_job_byte_for_byte(tmp_path: Path) -> None:
    xq = Xqute(workdir=tmp_path / "wd", forks=2)
    script = "import json,os,sys; print(json.dumps([sys.argv[1:], os.environ['V']]))"
    job = await xq.feed(
        [sys.executable, "-c", script, *AWKWARD], envs={"V": AWKWARD[6] + AWKWARD[3]}
    )
    await run(xq)
    assert job.status == JobStatus.FINISHED, read(job.stderr_file.path)
    import json

    args, env = json.loads(read(job.stdout_file.path))
    assert args == AWKWARD
    assert env == '$(echo subst)double"quote'


async def test_string_command_is_shell_code(tmp_path: Path) -> None:
    xq = Xqute(workdir=tmp_path)
    job = await xq.feed(
        'echo $((1+2)) | tr 3 x; echo "$XQUTE_JOB_INDEX $XQUTE_JOB_METADIR"'
    )
    await run(xq)
    out = read(job.stdout_file.path).splitlines()
    assert out[0] == "x"
    assert out[1] == f"0 {job.metadir.path}"


async def test_many_fast_jobs_all_finish(tmp_path: Path) -> None:
    """xqute 2.2.1 overwrote FINISHED with SUBMITTED and hung; never here."""
    xq = Xqute(workdir=tmp_path, forks=32)
    for _ in range(100):
        await xq.feed(["true"])
    await run(xq)
    assert {j.status for j in xq.jobs} == {JobStatus.FINISHED}
    for j in xq.jobs:
        assert read(j.status_file.path).strip() == "6"
        assert read(j.rc_file.path).strip() == "0"


async def test_command_not_found_fails_with_127(tmp_path: Path) -> None:
    xq = Xqute(workdir=tmp_path)
    job = await xq.feed(["no-such-program-xq"])
    await run(xq)
    assert job.status == JobStatus.FAILED
    assert await job.get_rc() == 127
    assert "not found" in read(job.stderr_file.path)


async def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    marker = f"xq-timeout-{os.getpid()}"
    xq = Xqute(workdir=tmp_path, scheduler_opts={"timeout": 1, "kill_grace": 1})
    # a child that ignores TERM, in the background: it must still die
    job = await xq.feed(
        ["bash", "-c", f"(trap '' TERM; exec -a {marker} sleep 60) & sleep 60; wait"]
    )
    await run(xq)
    assert job.status == JobStatus.FAILED
    assert await job.get_rc() == 124
    assert "timed out" in read(job.stderr_file.path)
    await assert_gone(marker)


async def test_many_timeouts_at_once_each_record_124(tmp_path: Path) -> None:
    # Regression: the wrapper's timer, killed right after its fork (before it
    # exec'd), ran the wrapper's exit code in the forked process and wrote
    # job.status while the wrapper's final KILL landed: an empty status and a
    # job called lost (rc -1) for about 1 job in 100 under load.
    marker = f"xq-many-timeouts-{os.getpid()}"
    xq = Xqute(workdir=tmp_path, forks=40, scheduler_opts={"timeout": 1, "kill_grace": 1})
    jobs = [
        await xq.feed(
            ["bash", "-c", f"(trap '' TERM; exec -a {marker} sleep 60) & sleep 60"]
        )
        for _ in range(40)
    ]
    await run(xq)
    outcome = [(j.status, await j.get_rc()) for j in jobs]
    assert outcome == [(JobStatus.FAILED, 124)] * len(jobs), [
        read(j.stderr_file.path) for j, o in zip(jobs, outcome, strict=True)
        if o != (JobStatus.FAILED, 124)
    ]
    await assert_gone(marker)


async def test_retry_archives_attempts_and_succeeds(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    xq = Xqute(workdir=tmp_path / "wd", error_strategy="retry", num_retries=3)
    cmd = f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; echo try$n; [ $n -ge 2 ]"
    job = await xq.feed(cmd)
    await run(xq)
    assert job.status == JobStatus.FINISHED
    assert job.trial_count == 2
    retry = job.retry_dir.path
    assert sorted(p.name for p in retry.iterdir()) == ["0", "1"]
    assert read(retry / "0" / "job.stdout") == "try0\n"
    assert read(retry / "1" / "job.rc").strip() == "1"
    assert read(job.stdout_file.path) == "try2\n"


async def test_retry_gives_up_after_num_retries(tmp_path: Path) -> None:
    xq = Xqute(workdir=tmp_path, error_strategy="retry", num_retries=2)
    job = await xq.feed("exit 3")
    await run(xq)
    assert job.status == JobStatus.FAILED
    assert job.trial_count == 2
    assert await job.get_rc() == 3


async def test_halt_stops_submission_and_kills_running(tmp_path: Path) -> None:
    marker = f"xq-halt-{os.getpid()}"
    xq = Xqute(workdir=tmp_path, forks=2, error_strategy="halt")
    slow = await xq.feed(["bash", "-c", f"exec -a {marker} sleep 60"])
    await xq.feed("sleep 0.3; exit 1")
    later = [await xq.feed(["true"]) for _ in range(5)]
    await run(xq, timeout=30)
    assert slow.status == JobStatus.FAILED
    assert all(j.status == JobStatus.QUEUED for j in later)
    assert pids_with(marker) == []


async def test_sigterm_kills_running_jobs_and_returns(tmp_path: Path) -> None:
    marker = f"xq-sigterm-{os.getpid()}"
    events: list[str] = []

    class Watch:
        name = "watch-sigterm"

        @plugin.impl
        async def on_job_started(scheduler, job):
            events.append("started")
            if len(events) == 2:
                os.kill(os.getpid(), signal.SIGTERM)

        @plugin.impl
        async def on_shutdown(xqute, sig):
            events.append(f"shutdown:{sig}")

    before = signal.getsignal(signal.SIGTERM)
    xq = Xqute(workdir=tmp_path, forks=2, plugins=[Watch])
    for _ in range(2):
        await xq.feed(["bash", "-c", f"(exec -a {marker} sleep 60) & wait"])
    await run(xq, timeout=30)
    assert f"shutdown:{signal.SIGTERM}" in events
    assert [j.status for j in xq.jobs] == [JobStatus.FAILED, JobStatus.FAILED]
    # killed by us: the one rc for that, whichever way the kill went (not "1", not 143)
    assert [await j.get_rc() for j in xq.jobs] == [KILLED_RC, KILLED_RC]
    assert pids_with(marker) == []
    assert signal.getsignal(signal.SIGTERM) == before


async def test_second_signal_during_the_stop_cleanup_exits_at_once(tmp_path: Path) -> None:
    """A second SIGTERM forces the exit even when it lands while the poll
    cycle is still cleaning up after the first one (over SSH that cleanup is
    a round trip).  It used to be swallowed there, and the "exit at once"
    became a full stop waiting the kill grace of jobs that ignore TERM."""
    marker = f"xq-second-signal-{os.getpid()}"
    started = asyncio.Event()
    sent: list[int] = []

    class SlowCleanup(LocalScheduler):
        async def check_all_done(self, jobs, polling_counter):  # type: ignore[no-untyped-def]
            if not started.is_set() or sent:
                return await super().check_all_done(jobs, polling_counter)
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)  # the first stop, mid-cycle
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                os.kill(os.getpid(), signal.SIGTERM)  # the user insists
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(20):  # a cleanup slower than the user
                        await asyncio.Event().wait()
                raise
            return False

    class Started:
        name = "started-second-signal"

        @plugin.impl
        async def on_job_started(scheduler, job):
            started.set()

    xq = Xqute(
        SlowCleanup,
        workdir=tmp_path,
        forks=1,
        plugins=[Started],
        scheduler_opts={"kill_grace": 120},
    )
    await xq.feed(["bash", "-c", f"trap '' TERM; exec -a {marker} sleep 120"])
    try:
        with pytest.raises(KeyboardInterrupt):
            await run(xq, timeout=15)  # the old way waited the 120 s grace
    finally:
        for pid in pids_with(marker):
            os.kill(pid, signal.SIGKILL)
    assert sent == [1]


def test_import_changes_nothing() -> None:
    import subprocess

    code = (
        "import asyncio, signal; p = asyncio.get_event_loop_policy(); "
        "h = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM); "
        "import xqute_ssh, xqute_ssh.schedulers.local; "
        "assert asyncio.get_event_loop_policy() is p; "
        "assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == h; "
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


async def test_hooks_fire_in_order(tmp_path: Path) -> None:
    seen: list[tuple[str, int]] = []

    class Rec:
        name = "rec-order"

        @plugin.impl
        async def on_job_init(scheduler, job):
            seen.append(("init", job.index))

        @plugin.impl
        async def on_job_queued(scheduler, job):
            seen.append(("queued", job.index))

        @plugin.impl
        async def on_job_submitting(scheduler, job):
            seen.append(("submitting", job.index))

        @plugin.impl
        async def on_job_submitted(scheduler, job):
            seen.append(("submitted", job.index))

        @plugin.impl
        async def on_job_started(scheduler, job):
            seen.append(("started", job.index))

        @plugin.impl
        async def on_job_succeeded(scheduler, job):
            seen.append(("succeeded", job.index))

        @plugin.impl
        async def on_job_failed(scheduler, job):
            seen.append(("failed", job.index))

        @plugin.impl
        def on_jobcmd_init(scheduler, job):
            return "export FROM_INIT=i"

        @plugin.impl
        def on_jobcmd_prep(scheduler, job):
            return "export FROM_PREP=p"

        @plugin.impl
        def on_jobcmd_end(scheduler, job):
            return 'echo "end saw rc=$rc" >&2'

    xq = Xqute(workdir=tmp_path, plugins=[Rec])
    ok = await xq.feed('echo "$FROM_INIT$FROM_PREP"')
    bad = await xq.feed("exit 4")
    await run(xq)
    for idx, last in ((0, "succeeded"), (1, "failed")):
        names = [n for n, i in seen if i == idx]
        assert names == ["init", "queued", "submitting", "submitted", "started", last]
    assert read(ok.stdout_file.path) == "ip\n"
    assert "end saw rc=4" in read(bad.stderr_file.path)
    # plugins=[...] is for this run only
    assert "rec-order" not in plugin.get_enabled_plugin_names()


async def test_feed_hooks_follow_the_runs_plugins_wherever_they_come_from(
    tmp_path: Path,
) -> None:
    """feed() skips simplug's context when no plugin implements its hooks
    (a cost per job); a registered plugin that implements them still runs,
    and one the run's plugin list turns off still does not."""
    seen: list[str] = []

    class Registered:
        name = "feed-registered"

        @plugin.impl
        async def on_job_queued(scheduler, job):
            seen.append(f"registered {job.index}")

    class Other:
        name = "feed-other"

        @plugin.impl
        async def on_job_succeeded(scheduler, job):
            seen.append(f"other ok {job.index}")

    with plugin.plugins_context([Registered, Other]):  # registered for this test only
        xq = Xqute(workdir=tmp_path / "a", plugins=[Other])  # "+": the rest stay on
        await xq.feed(["true"])
        assert seen == ["registered 0"]
        only = Xqute(workdir=tmp_path / "b", plugins=["feed-other"])  # only this one
        await only.feed(["true"])
        assert seen == ["registered 0"]
        await run(only)
        assert seen == ["registered 0", "other ok 0"]
    assert "feed-registered" not in plugin.get_all_plugin_names()


async def test_jobs_fed_in_a_row_share_one_worker_thread_hop(tmp_path: Path) -> None:
    """A job's directory is made in the background when no plugin needs it
    at feed time: a script feeding 200 jobs in a loop pays for one trip to
    a worker thread, not 200 (each cost ~0.2 ms of CPU, most of a feed)."""
    import concurrent.futures

    class Counting(concurrent.futures.ThreadPoolExecutor):
        calls = 0

        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            Counting.calls += 1
            return super().submit(fn, *args, **kwargs)

    loop = asyncio.get_running_loop()
    executor = Counting(max_workers=2)
    loop.set_default_executor(executor)
    xq = Xqute(workdir=tmp_path / "wd", forks=8)
    await xq.feed(["true"])  # the first feed makes the workdir
    before = Counting.calls
    jobs = [await xq.feed(["true"]) for _ in range(200)]
    # no feed waited for a thread: the 200 directories go together, later
    assert Counting.calls == before
    await run(xq)
    assert all(j.status == JobStatus.FINISHED for j in xq.jobs)
    assert all(j.metadir.path.is_dir() for j in jobs)
    executor.shutdown(wait=True)


async def test_a_job_whose_directory_cannot_be_made_fails_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    workdir = tmp_path / "wd"
    workdir.mkdir()
    (workdir / "1").write_text("a file where job 1's directory goes\n")
    xq = Xqute(workdir=workdir, forks=2)
    jobs = [await xq.feed(["true"]) for _ in range(3)]
    await run(xq)
    assert [j.status for j in jobs] == [JobStatus.FINISHED, JobStatus.FAILED, JobStatus.FINISHED]
    assert f"cannot create its directory {str(workdir / '1')!r}" in caplog.text
    assert (workdir / "1").read_text() == "a file where job 1's directory goes\n"


async def test_submitting_hook_can_cancel(tmp_path: Path) -> None:
    class Skip:
        name = "skip-odd"

        @plugin.impl
        async def on_job_submitting(scheduler, job):
            if job.index == 1:
                await job.set_status(JobStatus.FINISHED)  # e.g. a cached result
                return False
            if job.index == 2:
                return False
            return None

    xq = Xqute(workdir=tmp_path, plugins=[Skip])
    jobs = [await xq.feed(["bash", "-c", "echo ran"]) for _ in range(3)]
    await run(xq)
    assert [j.status for j in jobs] == [
        JobStatus.FINISHED,
        JobStatus.FINISHED,
        JobStatus.FAILED,
    ]
    assert not jobs[1].stdout_file.path.exists()
    assert "cancelled by a plugin" in read(jobs[2].stderr_file.path)


async def test_keep_feeding(tmp_path: Path) -> None:
    xq = Xqute(workdir=tmp_path, forks=4)
    await xq.feed(["true"])
    await xq.run_until_complete(keep_feeding=True)
    await asyncio.sleep(0.05)
    for _ in range(5):
        await xq.feed(["true"])
    async with asyncio.timeout(30):
        await xq.stop_feeding()
    assert len(xq.jobs) == 6
    assert {j.status for j in xq.jobs} == {JobStatus.FINISHED}


async def test_lost_wrapper_is_failed_with_reason(tmp_path: Path) -> None:
    class KillWrapper:
        name = "kill-wrapper"

        @plugin.impl
        async def on_job_started(scheduler, job):
            os.kill(int(job.jid), signal.SIGKILL)

    xq = Xqute(workdir=tmp_path, plugins=[KillWrapper])
    job = await xq.feed(["sleep", "5"])
    await run(xq)
    assert job.status == JobStatus.FAILED
    assert "without writing a final status" in read(job.stderr_file.path)


async def test_local_end_noticed_without_waiting_for_the_poll(tmp_path: Path) -> None:
    xq = Xqute(workdir=tmp_path, scheduler_opts={"poll_interval": 30})
    job = await xq.feed(["true"])
    # with a 30 s poll interval only the exit watcher can end this quickly
    await run(xq, timeout=10)
    assert job.status == JobStatus.FINISHED


# ------------------------------------------------------------- bad input
def test_unknown_scheduler_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="known schedulers: local, slurm, ssh"):
        get_scheduler("slurmish")


@pytest.mark.parametrize("cmd", [[], "", "   ", [""]])
async def test_empty_command_rejected(tmp_path: Path, cmd) -> None:
    xq = Xqute(workdir=tmp_path)
    with pytest.raises(ConfigError, match="empty"):
        await xq.feed(cmd)
    assert xq.jobs == []


@pytest.mark.parametrize("name", ["1ABC", "A-B", "A B", "", "A=B", "X;rm"])
async def test_bad_env_names_rejected(tmp_path: Path, name: str) -> None:
    xq = Xqute(workdir=tmp_path)
    with pytest.raises(ConfigError, match="not a shell identifier"):
        await xq.feed(["true"], envs={name: "x"})


async def test_unwritable_workdir_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    xq = Xqute(workdir=blocker / "wd")
    with pytest.raises(WorkdirError, match=str(blocker / "wd")):
        await xq.feed(["true"])


@pytest.mark.parametrize("forks", [0, -1, 1.5])
def test_forks_below_one_rejected(tmp_path: Path, forks) -> None:
    with pytest.raises(ConfigError, match="forks"):
        Xqute(workdir=tmp_path, forks=forks)


def test_unknown_scheduler_option_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'timeuot' \\(did you mean 'timeout'\\?\\)"):
        Xqute(workdir=tmp_path, scheduler_opts={"timeuot": 3})


def test_unknown_ssh_option_names_the_one_meant(tmp_path: Path) -> None:
    """A typo in an option that is a default for every server (taken by
    name, not a parameter) is matched too, and the known ones are listed."""
    with pytest.raises(ConfigError) as err:
        Xqute("ssh", workdir=tmp_path, scheduler_opts={"servers": ["h"], "keyfle": "k", "zzz": 1})
    text = str(err.value)
    assert "'keyfle' (did you mean 'keyfile'?), 'zzz';" in text
    assert "known: " in text and "lost_after" in text and "poll_interval" in text


def test_bad_error_strategy(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'retry'"):
        Xqute(workdir=tmp_path, error_strategy="retyr")


# ---------------------------------------------------- framework subclassing
class FrameworkJob(Job):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tag = "framework"


class FrameworkMixin:
    job_class = FrameworkJob

    def jobcmd_init(self, job) -> str:  # type: ignore[no-untyped-def]
        return super().jobcmd_init(job) + "\nexport FW=mixin"  # type: ignore[misc]


class FrameworkLocal(FrameworkMixin, LocalScheduler):
    pass


async def test_mixin_subclass_like_pipen(tmp_path: Path) -> None:
    sched = FrameworkLocal(workdir=tmp_path, forks=2)
    await sched.post_init()
    job = await sched.create_job(0, ["bash", "-c", "echo $FW"])
    assert isinstance(job, FrameworkJob)
    xq = Xqute(FrameworkLocal, workdir=tmp_path / "x")
    j = await xq.feed(["bash", "-c", "echo $FW"])
    await run(xq)
    assert isinstance(j, FrameworkJob)
    assert read(j.stdout_file.path) == "mixin\n"
    assert issubclass(FrameworkLocal, Scheduler)


async def test_stage_in_and_out_locally(tmp_path: Path) -> None:
    src = tmp_path / "in put 'q'.txt"
    src.write_text("data\n")
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "f").write_text("deep\n")
    target = tmp_path / "results" / "copied.txt"
    xq = Xqute(workdir=tmp_path / "wd")
    job = await xq.feed(
        ["bash", "-c", 'cat "$1" folder/sub/f > out.txt; pwd > where', "_", src.name],
        stage_in=[src, folder],
        stage_out={"out.txt": str(target)},
    )
    await run(xq)
    assert job.status == JobStatus.FINISHED, read(job.stderr_file.path)
    assert target.read_text() == "data\ndeep\n"
    assert read(job.metadir.path / "where").strip() == str(job.metadir.path)


async def test_missing_stage_in_is_an_error_at_feed(tmp_path: Path) -> None:
    xq = Xqute(workdir=tmp_path)
    with pytest.raises(ConfigError, match=r"nope\.txt"):
        await xq.feed(["true"], stage_in=[tmp_path / "nope.txt"])
    assert xq.jobs == []


async def test_missing_stage_out_fails_the_job(tmp_path: Path) -> None:
    xq = Xqute(workdir=tmp_path)
    job = await xq.feed(["true"], stage_out=["never-made.txt"])
    await run(xq)
    assert job.status == JobStatus.FAILED
    assert "never-made.txt" in read(job.stderr_file.path)


LOCAL_CONTROLLER = """
import asyncio, json, sys
from xqute_ssh import Xqute
workdir, counter = sys.argv[1], sys.argv[2]
resume = sys.argv[3:] != ["fresh"]
async def main():
    xq = Xqute(forks=4, workdir=workdir, scheduler_opts={"resume": resume})
    for i in range(4):
        await xq.feed(["bash", "-c", f"echo x >> {counter}/{i}; sleep 1"])
    await xq.run_until_complete()
    print(json.dumps([j.status.name for j in xq.jobs]))
asyncio.run(main())
"""


async def test_restart_keeps_results_of_jobs_that_ended_unwatched(tmp_path: Path) -> None:
    """Controller SIGKILLed; its jobs end while nobody watches; a restart
    takes their results instead of running them again.  Only a fresh run
    (``resume=False``) runs them again."""
    import json
    import subprocess

    script = tmp_path / "ctl.py"
    script.write_text(LOCAL_CONTROLLER)
    counter = tmp_path / "runs"
    counter.mkdir()
    args = [sys.executable, str(script), str(tmp_path / "wd"), str(counter)]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    async with asyncio.timeout(30):  # hang guard
        while len(list(counter.iterdir())) < 4:
            await asyncio.sleep(0.02)
    first.kill()
    first.wait()
    async with asyncio.timeout(30):  # the orphaned jobs end by themselves
        while not all((tmp_path / "wd" / str(i) / "job.rc").exists() for i in range(4)):
            await asyncio.sleep(0.05)
    for extra in ([], [], ["fresh"]):
        out = subprocess.run([*args, *extra], capture_output=True, text=True, timeout=60)
        assert json.loads(out.stdout.splitlines()[-1]) == ["FINISHED"] * 4, out.stderr
    # restarts: results kept (1 run each), however often; then a fresh run
    # (resume=False, asked for explicitly): 2 runs each
    assert [read(counter / str(i)) for i in range(4)] == ["x\nx\n"] * 4
