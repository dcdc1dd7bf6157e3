"""The restart rules (attempt.decide) and the fencing leases (Fence): pure
bookkeeping, tested over every combination that matters."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from xqute_ssh import JobStatus, Xqute
from xqute_ssh.attempt import Action, AttemptRecord, decide
from xqute_ssh.schedulers.ssh.fencing import Fence, Verdict

from .helpers import read


def rec(**kw: object) -> AttemptRecord:
    base: dict[str, object] = dict(
        status=None, same_command=True, jid=None, has_pid=False, killed=False, trials=0
    )
    base.update(kw)
    return AttemptRecord(**base)  # type: ignore[arg-type]


STATUSES = [None, *JobStatus]


def test_decide_never_restarts_an_attempt_that_may_run_or_ended() -> None:
    """Every combination of what a metadir can hold."""
    for status, same, jid, pid, killed, resume in itertools.product(
        STATUSES, [True, False, None], [None, "h:", "h:1:2"], [False, True],
        [False, True], [False, True],
    ):
        r = rec(status=status, same_command=same, jid=jid, has_pid=pid, killed=killed)
        action = decide(r, resume)
        started = pid or jid == "h:1:2"
        ended = status is not None and status.is_terminal
        # Whatever may have a live process is checked before anything starts.
        if started and not ended:
            assert action == Action.CHECK, r
        # Only an attempt of this command that ended on its own is reported
        # as it is, and only when resuming.
        if action == Action.RECORDED:
            assert resume and same is not False and started and not killed, r
            assert status is not None and status.is_terminal, r
        if resume and same is not False and started and not killed and status in (
            JobStatus.FINISHED, JobStatus.FAILED,
        ):
            assert action == Action.RECORDED, r
        # A launch that may be in flight is waited for, not doubled.
        if status == JobStatus.SUBMITTED and not started:
            assert action == Action.CHECK, r
        if not started and status != JobStatus.SUBMITTED:
            assert action == Action.START, r


def test_fence_waits_while_the_heartbeat_goes_on_and_fails_when_it_stops() -> None:
    fence = Fence(lost_after=5)
    assert fence.lease == 5 and fence.heartbeat_interval == 1
    assert fence.verdict(1, beat=100, unreachable_for=0, now=0) == Verdict.WAIT
    # the host is away long enough, but the heartbeat changes: alive
    for t in range(1, 20):
        assert fence.verdict(1, beat=100 + t, unreachable_for=t, now=t) == Verdict.WAIT
    # it stops: dead only a full lease after the last change
    assert fence.verdict(1, beat=119, unreachable_for=23, now=23) == Verdict.WAIT
    assert fence.verdict(1, beat=119, unreachable_for=24, now=24) == Verdict.DEAD


def test_fence_without_heartbeat_gives_up_fenced_after_lost_after() -> None:
    fence = Fence(lost_after=2)
    assert fence.lease == 3  # at least three one-second beats
    assert fence.verdict(7, beat=None, unreachable_for=1.9, now=1.9) == Verdict.WAIT
    assert fence.verdict(7, beat=None, unreachable_for=2, now=2) == Verdict.FENCED
    fence.verdict(8, beat=5, unreachable_for=0, now=0)
    fence.forget(8)  # the host answered: the lease starts again next time
    assert fence.verdict(8, beat=5, unreachable_for=3, now=10) == Verdict.WAIT
    assert fence.verdict(8, beat=5, unreachable_for=6, now=13) == Verdict.DEAD


# ------------------------------------------------ restart rules, for real
async def run_jobs(
    wd: Path, cmds: list[list[str]], error_strategy: str = "ignore",
    num_retries: int = 3, **opts: object,
) -> Xqute:
    xq = Xqute(
        workdir=wd, forks=4, error_strategy=error_strategy, num_retries=num_retries,
        scheduler_opts=opts,
    )
    for cmd in cmds:
        await xq.feed(cmd)
    async with asyncio.timeout(30):  # hang guard
        await xq.run_until_complete()
    return xq


def counting(counter: Path, rc: int = 0) -> list[str]:
    return ["bash", "-c", 'echo x >> "$1"; exit "$2"', "_", str(counter), str(rc)]


async def test_ended_attempts_are_reported_not_rerun_unless_fresh(tmp_path: Path) -> None:
    wd, ok, bad = tmp_path / "wd", tmp_path / "ok", tmp_path / "bad"
    await run_jobs(wd, [counting(ok), counting(bad, 3)])
    again = await run_jobs(wd, [counting(ok), counting(bad, 3)])
    assert [j.status for j in again.jobs] == [JobStatus.FINISHED, JobStatus.FAILED]
    assert [await j.get_rc() for j in again.jobs] == [0, 3]
    assert read(ok) == read(bad) == "x\n"
    # "retry": the failed attempt counts; one retry left of num_retries=1
    await run_jobs(wd, [counting(ok), counting(bad, 3)], error_strategy="retry", num_retries=1)
    assert read(ok) == "x\n" and read(bad) == "x\nx\n"
    await run_jobs(wd, [counting(ok), counting(bad, 3)], error_strategy="retry", num_retries=1)
    assert read(bad) == "x\nx\n"  # both attempts used up
    # a fresh run, asked for explicitly
    await run_jobs(wd, [counting(ok), counting(bad, 3)], resume=False)
    assert read(ok) == "x\nx\n" and read(bad) == "x\nx\nx\n"


async def test_changed_command_runs_and_killed_attempt_runs_again(tmp_path: Path) -> None:
    wd, a, b = tmp_path / "wd", tmp_path / "a", tmp_path / "b"
    await run_jobs(wd, [counting(a)])
    await run_jobs(wd, [counting(b)])  # another command in metadir 0: it runs
    assert read(a) == read(b) == "x\n"
    # a job stopped by the controller (a halt) is not an outcome: it runs again
    marker, go = tmp_path / "slow", tmp_path / "go"
    slow = ["bash", "-c", 'echo x >> "$1"; [ -e "$2" ] || sleep 30', "_", str(marker), str(go)]
    fail = ["bash", "-c", "sleep 0.3; exit 1"]
    xq = await run_jobs(wd, [fail, slow], error_strategy="halt")
    assert xq.jobs[1].status == JobStatus.FAILED
    assert (wd / "1" / "job.killed").exists()
    go.touch()
    again = await run_jobs(wd, [fail, slow])
    assert read(marker) == "x\nx\n"  # the killed one ran again ...
    assert again.jobs[1].status == JobStatus.FINISHED
    assert again.jobs[0].status == JobStatus.FAILED  # ... the failed one did not
