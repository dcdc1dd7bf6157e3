"""The SSH scheduler driven directly, as xqute 2.x code drives a scheduler.

A job handed straight to ``submit_job_and_update_status`` (never fed to an
Xqute) used to stay INIT in memory: ``kill_running_jobs`` then left it
running on its host, untracked.  Against real sshd hosts from the harness.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from xqute_ssh import Job, JobStatus
from xqute_ssh.schedulers.ssh import SshScheduler

from ..helpers import assert_gone, pids_with, wait_until


def servers(cluster: Any) -> dict[str, dict[str, Any]]:
    return {h.name: h.server_spec() for h in cluster.hosts}


async def poll_until_done(sched: SshScheduler, jobs: list[Job]) -> None:
    """What an orchestrator does: poll cycles until every job has ended."""
    async with asyncio.timeout(60):  # hang guard only
        counter = 0
        while not await sched.check_all_done(jobs, counter):
            counter += 1
            sched.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(sched.poll_interval):
                    await sched.wakeup.wait()


async def test_job_submitted_straight_from_init_is_tracked_and_killed(
    sshd_cluster, tmp_path: Path
) -> None:
    marker = f"xq-direct-ssh-{os.getpid()}"
    sched = SshScheduler(
        workdir=tmp_path / "wd", servers=servers(sshd_cluster), kill_grace=1
    )
    job = Job(0, ["bash", "-c", f"exec -a {marker} sleep 60"], sched.workdir)
    try:
        await sched.submit_job_and_update_status(job)
        assert job.status == JobStatus.SUBMITTED  # was: INIT for ever
        # The hosts are sshd processes on this machine: their jobs show here.
        await wait_until(lambda: pids_with(marker) != [], what="the job to start")
        await sched.kill_running_jobs([job])
        assert job.status == JobStatus.FAILED
        await assert_gone(marker)  # was: left running on its host
    finally:
        await sched.shutdown()


async def test_create_job_then_run_to_the_end_without_an_xqute(
    sshd_cluster, tmp_path: Path
) -> None:
    sched = SshScheduler(workdir=tmp_path / "wd", servers=servers(sshd_cluster))
    job = await sched.create_job(0, "", envs={"N": 0})  # as pipen: empty, set later
    job.cmd = ["bash", "-c", 'echo "n=$N"']
    try:
        await sched.submit_job_and_update_status(job)
        await poll_until_done(sched, [job])
        assert job.status == JobStatus.FINISHED
        assert (await job.stdout_file.a_read_text()) == "n=0\n"
        assert await sched.count_running_jobs([job]) == 0
    finally:
        await sched.shutdown()
