"""Hosts that die, networks that break: every job ends right, none twice."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from xqute_ssh import JobStatus, Xqute, plugin
from xqute_ssh.schedulers.ssh import parse_jid

from ..helpers import read


def servers(cluster: Any, **extra: Any) -> dict[str, dict[str, Any]]:
    return {h.name: {**h.server_spec(), **extra} for h in cluster.hosts}


def counted_job(counter: Path, i: int, seconds: float) -> list[str]:
    return ["bash", "-c", f"echo x >> {counter}/{i}; sleep {seconds}"]


async def test_host_dies_for_good_jobs_fail_over(sshd_cluster, tmp_path: Path) -> None:
    """Running jobs there are reported lost (naming the host) and, under
    retry, run again on the other host; queued jobs avoid it."""
    counter = tmp_path / "runs"
    counter.mkdir()
    doomed = sshd_cluster.hosts[1]
    opts = {
        "servers": servers(sshd_cluster, forks=2, connect_timeout=2, connect_retries=0,
                           keepalive_interval=1, keepalive_count_max=2),
        "lost_after": 3,
        "host_cooldown": 120,
    }
    lost_msgs: list[str] = []

    class KillHost:
        name = "kill-host"
        killed = False

        @plugin.impl
        async def on_job_started(scheduler, job):
            if not KillHost.killed and parse_jid(job.jid)[0] == doomed.name:  # type: ignore[index]
                KillHost.killed = True
                asyncio.get_running_loop().call_later(0.3, doomed.stop)

        @plugin.impl
        async def on_job_queued(scheduler, job):
            if job.trial_count:
                lost_msgs.append(read(job.retry_dir.path / str(job.trial_count - 1) / "job.stderr"))

    xq = Xqute("ssh", forks=4, workdir=tmp_path / "wd", error_strategy="retry",
               num_retries=2, scheduler_opts=opts, plugins=[KillHost])
    for i in range(8):
        await xq.feed(counted_job(counter, i, 1.5))
    async with asyncio.timeout(120):
        await xq.run_until_complete()
    assert KillHost.killed
    assert {j.status for j in xq.jobs} == {JobStatus.FINISHED}
    # every job finished on the surviving host in the end
    assert {parse_jid(j.jid)[0] for j in xq.jobs} == {sshd_cluster.hosts[0].name}  # type: ignore[index]
    assert lost_msgs and all(doomed.address in m for m in lost_msgs), lost_msgs


@pytest.mark.slow
async def test_network_cut_then_restored(sshd_cluster_factory, tmp_path: Path) -> None:
    """Cut a host's network for 20 s mid-run: no hang, reconnect, all complete once."""
    cluster = sshd_cluster_factory(n=2, netns=True)
    counter = tmp_path / "runs"
    counter.mkdir()
    opts = {"servers": servers(cluster, forks=3, connect_timeout=3, connect_retries=1,
                               keepalive_interval=2, keepalive_count_max=3),
            "host_cooldown": 5, "lost_after": 120}
    xq = Xqute("ssh", forks=6, workdir=tmp_path / "wd", scheduler_opts=opts)
    for i in range(30):
        await xq.feed(counted_job(counter, i, 1))
    victim = cluster.hosts[0]

    async def cut() -> None:
        await asyncio.sleep(2)
        await asyncio.to_thread(victim.cut_network)
        await asyncio.sleep(20)
        await asyncio.to_thread(victim.restore_network)

    started = time.monotonic()
    task = asyncio.create_task(cut())
    async with asyncio.timeout(180):
        await xq.run_until_complete()
    await task
    assert {j.status for j in xq.jobs} == {JobStatus.FINISHED}, [
        (j.index, read(j.stderr_file.path)) for j in xq.jobs if j.status != JobStatus.FINISHED
    ]
    for i in range(30):
        assert read(counter / str(i)) == "x\n", f"job {i} ran twice"
    assert time.monotonic() - started < 170


@pytest.mark.slow
async def test_network_cut_for_good_fails_over(sshd_cluster_factory, tmp_path: Path) -> None:
    """A host cut off for good: new jobs go to the other host within the
    keepalive timeout; nothing hangs; every job runs exactly once."""
    cluster = sshd_cluster_factory(n=2, netns=True)
    counter = tmp_path / "runs"
    counter.mkdir()
    opts = {"servers": servers(cluster, forks=3, connect_timeout=2, connect_retries=0,
                               keepalive_interval=1, keepalive_count_max=3, command_timeout=5),
            "host_cooldown": 300, "lost_after": 5}
    xq = Xqute("ssh", forks=6, workdir=tmp_path / "wd", error_strategy="retry",
               num_retries=2, scheduler_opts=opts)
    for i in range(24):
        await xq.feed(counted_job(counter, i, 1))
    victim = cluster.hosts[0]
    cut_at: list[float] = []

    async def cut() -> None:
        await asyncio.sleep(2)
        await asyncio.to_thread(victim.cut_network)
        cut_at.append(time.monotonic())

    task = asyncio.create_task(cut())
    async with asyncio.timeout(150):
        await xq.run_until_complete()
    await task
    assert {j.status for j in xq.jobs} == {JobStatus.FINISHED}
    late = [j for j in xq.jobs if j.submitted_at and j.submitted_at > time.time() - (time.monotonic() - cut_at[0]) + 10]
    assert all(parse_jid(j.jid)[0] == cluster.hosts[1].name for j in late)  # type: ignore[index]
    for i in range(24):
        # the shared filesystem still sees the cut host's jobs finish: none reran
        assert read(counter / str(i)) == "x\n", f"job {i} ran twice"
